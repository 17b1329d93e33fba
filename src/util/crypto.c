/*
 * provgate core: randomness, hashing, constant-time comparison and sealed
 * (AES-256-GCM) values.
 *
 * Randomness comes from getrandom(2) only. Hashing and AEAD use the
 * OpenSSL 3 EVP interfaces. Temporary buffers that held plaintext or key
 * material are wiped with OPENSSL_cleanse before they go out of scope.
 */
#include <errno.h>
#include <string.h>
#include <sys/random.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include "provgate/util.h"

#define SEAL_PREFIX "v1."
#define SEAL_PREFIX_LEN 3
#define SEAL_NONCE_LEN 12
#define SEAL_TAG_LEN 16
#define SEAL_RAW_MAX (SEAL_NONCE_LEN + PG_SEAL_MAX_PLAINTEXT + SEAL_TAG_LEN)
/* Cap of a token given to pg_random_token (bytes of randomness). */
#define RANDOM_TOKEN_MAX 512
/* Cap of the associated data (a purpose label such as a cookie name). */
#define SEAL_AAD_MAX 1024

/*
 * Fill buf with n bytes from getrandom(2), looping over short reads and
 * EINTR. PG_ERR_INTERNAL if the kernel refuses (no fallback to anything
 * weaker). n == 0 is a no-op.
 */
pg_status_t
pg_random(void *buf, size_t n)
{
    unsigned char *p = buf;

    if (buf == NULL && n > 0) {
        return PG_ERR_INVALID;
    }
    while (n > 0) {
        ssize_t r = getrandom(p, n, 0);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            return PG_ERR_INTERNAL;
        }
        p += r;
        n -= (size_t)r;
    }
    return PG_OK;
}

/*
 * nbytes (1..512) random bytes as unpadded base64url into out
 * (NUL-terminated). PG_ERR_TOO_LARGE when outsz < pg_b64url_len(nbytes)+1,
 * PG_ERR_INVALID for nbytes 0 or over the cap.
 */
pg_status_t
pg_random_token(size_t nbytes, char *out, size_t outsz)
{
    unsigned char raw[RANDOM_TOKEN_MAX];
    pg_status_t st;

    if (out == NULL || nbytes == 0 || nbytes > sizeof(raw)) {
        return PG_ERR_INVALID;
    }
    if (outsz < pg_b64url_len(nbytes) + 1) {
        return PG_ERR_TOO_LARGE;
    }
    st = pg_random(raw, nbytes);
    if (st == PG_OK) {
        st = pg_b64url_encode(raw, nbytes, out, outsz);
    }
    OPENSSL_cleanse(raw, sizeof(raw));
    return st;
}

/*
 * SHA-256 of data[0..n) as 43 base64url characters + NUL in out
 * (outsz >= 44, else PG_ERR_TOO_LARGE). data may be NULL when n is 0.
 */
pg_status_t
pg_sha256_b64url(const void *data, size_t n, char *out, size_t outsz)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    static const unsigned char empty[1] = {0};

    if (out == NULL || (data == NULL && n > 0)) {
        return PG_ERR_INVALID;
    }
    if (outsz < 44) {
        return PG_ERR_TOO_LARGE;
    }
    if (EVP_Digest(data != NULL ? data : empty, n, md, &mdlen, EVP_sha256(),
                   NULL) != 1 || mdlen != 32) {
        return PG_ERR_INTERNAL;
    }
    return pg_b64url_encode(md, mdlen, out, outsz);
}

/*
 * 1 when a[0..alen) equals b[0..blen). The lengths are compared first (and
 * are not secret); the contents in time independent of where they differ.
 */
int
pg_ct_equal(const void *a, size_t alen, const void *b, size_t blen)
{
    if (alen != blen) {
        return 0;
    }
    if (alen == 0) {
        return 1;
    }
    if (a == NULL || b == NULL) {
        return 0;
    }
    return CRYPTO_memcmp(a, b, alen) == 0;
}

/*
 * Seal pt[0..ptlen) (ptlen <= PG_SEAL_MAX_PLAINTEXT) under key with
 * AES-256-GCM and a fresh random 96-bit nonce; aad (NUL-terminated, may be
 * NULL = "", at most 1024 bytes) is authenticated, not encrypted. out receives
 * "v1." base64url(nonce | ciphertext | tag) NUL-terminated; the size needed
 * is 3 + pg_b64url_len(28 + ptlen) + 1 (PG_ERR_TOO_LARGE if outsz is less).
 */
pg_status_t
pg_seal(const uint8_t key[PG_SEAL_KEY_LEN], const char *aad, const void *pt,
        size_t ptlen, char *out, size_t outsz)
{
    unsigned char raw[SEAL_RAW_MAX];
    EVP_CIPHER_CTX *ctx = NULL;
    pg_status_t st = PG_ERR_INTERNAL;
    int len = 0, fin = 0;
    size_t rawlen, aadlen;

    if (key == NULL || out == NULL || (pt == NULL && ptlen > 0)) {
        return PG_ERR_INVALID;
    }
    if (ptlen > PG_SEAL_MAX_PLAINTEXT) {
        return PG_ERR_TOO_LARGE;
    }
    aadlen = aad != NULL ? strlen(aad) : 0;
    if (aadlen > SEAL_AAD_MAX) {
        return PG_ERR_INVALID;
    }
    rawlen = SEAL_NONCE_LEN + ptlen + SEAL_TAG_LEN;
    if (outsz < SEAL_PREFIX_LEN + pg_b64url_len(rawlen) + 1) {
        return PG_ERR_TOO_LARGE;
    }
    if (pg_random(raw, SEAL_NONCE_LEN) != PG_OK) {
        return PG_ERR_INTERNAL;
    }
    ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL) {
        return PG_ERR_NOMEM;
    }
    if (EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, SEAL_NONCE_LEN,
                            NULL) != 1 ||
        EVP_EncryptInit_ex(ctx, NULL, NULL, key, raw) != 1) {
        goto done;
    }
    if (aadlen > 0 &&
        EVP_EncryptUpdate(ctx, NULL, &len, (const unsigned char *)aad,
                          (int)aadlen) != 1) {
        goto done;
    }
    len = 0;
    if (ptlen > 0 &&
        EVP_EncryptUpdate(ctx, raw + SEAL_NONCE_LEN, &len, pt, (int)ptlen) != 1) {
        goto done;
    }
    if (EVP_EncryptFinal_ex(ctx, raw + SEAL_NONCE_LEN + len, &fin) != 1 ||
        (size_t)len + (size_t)fin != ptlen) {
        goto done;
    }
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, SEAL_TAG_LEN,
                            raw + SEAL_NONCE_LEN + ptlen) != 1) {
        goto done;
    }
    memcpy(out, SEAL_PREFIX, SEAL_PREFIX_LEN);
    st = pg_b64url_encode(raw, rawlen, out + SEAL_PREFIX_LEN,
                          outsz - SEAL_PREFIX_LEN);
done:
    EVP_CIPHER_CTX_free(ctx);
    OPENSSL_cleanse(raw, sizeof(raw));
    return st;
}

/*
 * A decryption context with the AES-256-GCM key schedule for key already
 * set up, so that unsealing a cookie on every request only sets the nonce.
 * One context per process, re-keyed when a different key is seen (the
 * gateway uses one session key). Not thread-safe: the core runs on one
 * event-loop thread per process. Freed at exit by OpenSSL's cleanup of the
 * process; the key copy is kept only to compare.
 */
static EVP_CIPHER_CTX *
pg_unseal_ctx(const uint8_t key[PG_SEAL_KEY_LEN])
{
    static EVP_CIPHER_CTX *ctx;
    static uint8_t ctx_key[PG_SEAL_KEY_LEN];

    if (ctx != NULL && CRYPTO_memcmp(ctx_key, key, PG_SEAL_KEY_LEN) == 0) {
        return ctx;
    }
    if (ctx == NULL) {
        ctx = EVP_CIPHER_CTX_new();
        if (ctx == NULL) {
            return NULL;
        }
    }
    if (EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, SEAL_NONCE_LEN,
                            NULL) != 1 ||
        EVP_DecryptInit_ex(ctx, NULL, NULL, key, NULL) != 1) {
        EVP_CIPHER_CTX_free(ctx);
        ctx = NULL;
        return NULL;
    }
    memcpy(ctx_key, key, PG_SEAL_KEY_LEN);
    return ctx;
}

/*
 * Open a value made by pg_seal with the same key and aad. in[0..inlen) is
 * capped at the largest sealed form of PG_SEAL_MAX_PLAINTEXT bytes.
 *
 * Bad shape (no "v1." prefix, bad base64url, too short or too long) is
 * PG_ERR_INVALID; a failed tag check (tampering, wrong key, wrong aad) is
 * PG_ERR_CRYPTO; PG_ERR_TOO_LARGE when the plaintext does not fit outsz.
 * Decryption happens in a private buffer; only authenticated plaintext is
 * ever copied to out. On success *outlen is the length, and out is also
 * NUL-terminated when outsz leaves room for it.
 */
pg_status_t
pg_unseal(const uint8_t key[PG_SEAL_KEY_LEN], const char *aad, const char *in,
          size_t inlen, void *out, size_t outsz, size_t *outlen)
{
    unsigned char raw[SEAL_RAW_MAX];
    unsigned char pt[PG_SEAL_MAX_PLAINTEXT + 16];
    EVP_CIPHER_CTX *ctx = NULL;
    pg_status_t st = PG_ERR_INTERNAL;
    size_t rawlen = 0, ctlen, aadlen;
    int len = 0, fin = 0;

    if (outlen != NULL) {
        *outlen = 0;
    }
    if (key == NULL || in == NULL || (out == NULL && outsz > 0)) {
        return PG_ERR_INVALID;
    }
    aadlen = aad != NULL ? strlen(aad) : 0;
    if (aadlen > SEAL_AAD_MAX) {
        return PG_ERR_INVALID;
    }
    if (inlen < SEAL_PREFIX_LEN ||
        inlen > SEAL_PREFIX_LEN + pg_b64url_len(SEAL_RAW_MAX) ||
        memcmp(in, SEAL_PREFIX, SEAL_PREFIX_LEN) != 0) {
        return PG_ERR_INVALID;
    }
    if (pg_b64url_decode(in + SEAL_PREFIX_LEN, inlen - SEAL_PREFIX_LEN, raw,
                         sizeof(raw), &rawlen) != PG_OK ||
        rawlen < SEAL_NONCE_LEN + SEAL_TAG_LEN) {
        return PG_ERR_INVALID;
    }
    ctlen = rawlen - SEAL_NONCE_LEN - SEAL_TAG_LEN;
    if (ctlen > outsz) {
        OPENSSL_cleanse(raw, sizeof(raw));
        return PG_ERR_TOO_LARGE;
    }
    ctx = pg_unseal_ctx(key);
    if (ctx == NULL) {
        return PG_ERR_NOMEM;
    }
    /* the key schedule is cached in ctx; only the nonce changes */
    if (EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, raw) != 1) {
        goto done;
    }
    if (aadlen > 0 &&
        EVP_DecryptUpdate(ctx, NULL, &len, (const unsigned char *)aad,
                          (int)aadlen) != 1) {
        goto done;
    }
    len = 0;
    if (ctlen > 0 &&
        EVP_DecryptUpdate(ctx, pt, &len, raw + SEAL_NONCE_LEN, (int)ctlen) != 1) {
        goto done;
    }
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, SEAL_TAG_LEN,
                            raw + SEAL_NONCE_LEN + ctlen) != 1) {
        goto done;
    }
    if (EVP_DecryptFinal_ex(ctx, pt + len, &fin) != 1) {
        st = PG_ERR_CRYPTO;
        goto done;
    }
    if ((size_t)len + (size_t)fin != ctlen) {
        goto done;
    }
    if (ctlen > 0) {
        memcpy(out, pt, ctlen);
    }
    if (outsz > ctlen) {
        ((unsigned char *)out)[ctlen] = '\0';
    }
    if (outlen != NULL) {
        *outlen = ctlen;
    }
    st = PG_OK;
done:
    /* ctx stays cached for this key; the ciphertext is not secret */
    OPENSSL_cleanse(pt, ctlen);
    return st;
}
