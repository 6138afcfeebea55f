/*
 * jwk — the signing keys the JWT verifier trusts (RFC 7517/7518) and the one signature
 * primitive that uses them. A key set comes from a JWKS document (fetched or from a file
 * by the caller: this module does no I/O) or from an HMAC secret named in the config.
 * A set is immutable once built and reference-counted, so a JWKS refresh swaps a pointer
 * while requests still verifying on other threads keep the old set alive.
 * Names: aor_jwk_* for one key and the algorithms, aor_jwks_* for the set.
 */
#ifndef AOR_JWK_H
#define AOR_JWK_H

#include <stddef.h>
#include <stdint.h>

/* JWS algorithms we verify (RFC 7518 §3, RFC 8037 for EdDSA); the order is the bit order */
enum aor_jwk_alg {
    AOR_JWK_RS256,
    AOR_JWK_RS384,
    AOR_JWK_RS512,
    AOR_JWK_PS256,
    AOR_JWK_PS384,
    AOR_JWK_PS512,
    AOR_JWK_ES256,
    AOR_JWK_ES384,
    AOR_JWK_ES512,
    AOR_JWK_EDDSA, /* Ed25519 only */
    AOR_JWK_HS256,
    AOR_JWK_HS384,
    AOR_JWK_HS512,
    AOR_JWK_ALG_COUNT
};

#define AOR_JWK_ALG_BIT(a) (UINT32_C(1) << (a))
#define AOR_JWK_ALGS_ASYMMETRIC (AOR_JWK_ALG_BIT(AOR_JWK_HS256) - 1) /* RS*, PS*, ES*, EdDSA */
#define AOR_JWK_ALGS_HMAC (AOR_JWK_ALG_BIT(AOR_JWK_HS256) | AOR_JWK_ALG_BIT(AOR_JWK_HS384) | AOR_JWK_ALG_BIT(AOR_JWK_HS512))
#define AOR_JWK_ALGS_ALL (AOR_JWK_ALGS_ASYMMETRIC | AOR_JWK_ALGS_HMAC)

/* limits (each has a test at limit+1) */
#define AOR_JWKS_MAX_DOC (256 * 1024) /* bytes of JWKS JSON */
#define AOR_JWKS_MAX_KEYS 64          /* entries in "keys" */
#define AOR_JWKS_MAX_DEPTH 6          /* JSON nesting: {"keys":[{"x5c":[...]}]} is 3 */
#define AOR_JWK_MAX_KID 256           /* bytes of a kid, without the NUL */
#define AOR_JWK_RSA_MIN_BITS 2048
#define AOR_JWK_RSA_MAX_BITS 8192
#define AOR_JWK_HMAC_MAX_SECRET 1024 /* bytes; the minimum is the hash size (32/48/64) */
#define AOR_JWK_MAX_SIG 1024         /* bytes of the longest signature (RSA-8192) */

/* sync errors of the aor_jwks_* constructors */
enum {
    AOR_JWKS_E_ARG = -1,       /* NULL or out-of-range argument (HMAC: not an HS alg, secret too short/long) */
    AOR_JWKS_E_TOO_LARGE = -2, /* document over AOR_JWKS_MAX_DOC, or more than AOR_JWKS_MAX_KEYS entries */
    AOR_JWKS_E_MALFORMED = -3, /* not JSON, duplicate members, too deep, no "keys" array */
    AOR_JWKS_E_NO_KEY = -4,    /* parsed, but not one key is usable (see the stats for why) */
    AOR_JWKS_E_MIXED = -5,     /* AOR_JWKS_ACCEPT_OCT: symmetric and asymmetric keys in one set */
    AOR_JWKS_E_NOMEM = -6,
};

/* sync results of aor_jwk_verify */
enum {
    AOR_JWK_E_ALG = -1,       /* this key cannot verify that algorithm */
    AOR_JWK_E_SIGNATURE = -2, /* wrong length, r or s out of range, or does not verify */
    AOR_JWK_E_INTERNAL = -3,  /* allocation or library failure: nothing was decided */
};

/* aor_jwks_parse flags */
/* accept "kty":"oct" (HMAC) entries; only for key material the operator wrote, never for a fetched JWKS */
#define AOR_JWKS_ACCEPT_OCT 0x1u

/* what a parse did with each entry of "keys"; skipped entries are never an error by themselves */
struct aor_jwks_stats {
    unsigned entries;         /* members of the "keys" array */
    unsigned usable;          /* keys in the set */
    unsigned unsupported;     /* kty/crv/alg we do not verify with: oct (without the flag), Ed448, X25519, RSA-OAEP... */
    unsigned not_for_signing; /* "use" other than "sig", or "key_ops" without "verify" */
    unsigned private_parts;   /* refused: the entry publishes a private key (d, p, q, ...): it is compromised */
    unsigned invalid;         /* bad parameters: encoding, size, point not on the curve, weak RSA (e, ROCA) */
    unsigned duplicate_kid;   /* dropped: a kid shared by two signing entries (usable or not) is ambiguous */
};

/* one usable key, for logs and the admin CLI; strings live as long as the set */
struct aor_jwk_info {
    const char *kid; /* NULL when the JWK has none */
    const char *kty; /* "RSA", "EC", "OKP", "oct" */
    const char *crv; /* "P-256", "P-384", "P-521", "Ed25519"; NULL for RSA and oct */
    uint32_t algs;   /* AOR_JWK_ALG_BIT mask this key verifies: type ∩ the JWK's "alg" */
    unsigned bits;   /* RSA modulus or curve size, HMAC secret size in bits */
};

struct aor_jwk;
struct aor_jwks;

/**
 * Parses a JWKS document `{"keys":[...]}` of `len` bytes (need not be NUL-terminated).
 * Entries: RSA (n, e; 2048..8192-bit modulus; e odd, 3 <= e < 2^64; ROCA-fingerprinted
 * moduli refused), EC P-256/P-384/P-521 (x, y of exactly the coordinate size, point checked
 * on the curve), OKP Ed25519 (x). "use" must be "sig" and "key_ops" must hold "verify" when
 * present. "alg", when present, must be a JWS algorithm that fits the key; it then pins the
 * key to that one algorithm. An entry carrying private members is refused, not stripped.
 * Problem entries are skipped and counted in *stats (may be NULL), filled on every return.
 * Returns 0 and a set with one reference in *out, or an AOR_JWKS_E_* code and *out NULL.
 */
int aor_jwks_parse(const char *json, size_t len, unsigned flags, struct aor_jwks **out, struct aor_jwks_stats *stats);

/**
 * A set holding one HMAC secret for `alg` (HS256/384/512 only; the key verifies nothing
 * else). The secret must be at least the hash size (32, 48, 64 bytes: RFC 7518 §3.2) and at
 * most AOR_JWK_HMAC_MAX_SECRET; it is copied. `kid` may be NULL (the key then serves tokens
 * with any kid or none). Returns 0 and the set in *out, or AOR_JWKS_E_ARG / _NOMEM.
 */
int aor_jwks_new_hmac(enum aor_jwk_alg alg, const void *secret, size_t len, const char *kid, struct aor_jwks **out);

/* takes one more reference (any thread); returns set */
struct aor_jwks *aor_jwks_retain(struct aor_jwks *set);
/* drops one reference (any thread); the last one frees the set. NULL is a no-op. */
void aor_jwks_release(struct aor_jwks *set);

size_t aor_jwks_count(const struct aor_jwks *set);
/* the i-th key (i < count), NULL otherwise */
const struct aor_jwk *aor_jwks_get(const struct aor_jwks *set, size_t i);
/* the key whose kid is exactly these bytes, or NULL (kids are unique within a set) */
const struct aor_jwk *aor_jwks_find_kid(const struct aor_jwks *set, const char *kid, size_t kid_len);

void aor_jwk_info(const struct aor_jwk *key, struct aor_jwk_info *info);
/* AOR_JWK_ALG_BIT mask of the algorithms this key verifies */
uint32_t aor_jwk_algs(const struct aor_jwk *key);
/* NULL when the key has no kid */
const char *aor_jwk_kid(const struct aor_jwk *key);

/**
 * Checks `sig` over `data` with `key` under `alg`. The algorithm must be in the key's mask
 * (an HMAC algorithm is never tried with an RSA/EC/OKP key, nor the reverse). Signatures are
 * in JOSE form: RSA exactly the modulus size; ECDSA raw r||s of exactly 64/96/132 bytes with
 * 0 < r, s < n; Ed25519 64 bytes; HMAC exactly the hash size, compared in constant time.
 * RSA-PSS uses MGF1 with the same hash and a salt of the hash size.
 * Returns 0 when it verifies, else AOR_JWK_E_ALG, AOR_JWK_E_SIGNATURE or AOR_JWK_E_INTERNAL.
 * Thread-safe: the key is only read.
 */
int aor_jwk_verify(const struct aor_jwk *key, enum aor_jwk_alg alg, const void *data, size_t len, const unsigned char *sig,
                   size_t sig_len);

/* "RS256", ... for an algorithm; NULL if out of range */
const char *aor_jwk_alg_name(enum aor_jwk_alg alg);
/* the algorithm named by exactly these bytes (case-sensitive, so "none"/"None" are -1), or -1 */
int aor_jwk_alg_from_name(const char *name, size_t len);

/**
 * Strict base64url (RFC 7515 §2): alphabet A-Z a-z 0-9 - _, no padding, no whitespace, and
 * canonical (the unused low bits of the last character are zero). Decodes `len` characters
 * into out (capacity `cap`). Returns the decoded size, or -1 if the text is not strict
 * base64url or does not fit.
 */
long aor_jwk_b64url_decode(const char *in, size_t len, unsigned char *out, size_t cap);

/**
 * 1 if the JSON text nests objects/arrays no deeper than max_depth (a scalar is depth 0,
 * `{}` depth 1), 0 otherwise. A cheap pre-check so that jansson never recurses deeper than
 * we allow; the text is not otherwise validated.
 */
int aor_jwk_json_depth_ok(const char *json, size_t len, int max_depth);

#endif
