/*
 * jwt — verifies a client's bearer JWT (compact JWS, RFC 7515/7519) with an issuer's key
 * set (jwk.h) and policy (SPEC §3 auth.jwt): structure, header, signature, then claims.
 * Pure: no I/O and no clock, `now_s` is an argument. The caller owns fetching keys, the
 * verified-token cache, and the single-flight JWKS refetch the result may ask for.
 * Safe on any number of threads at once: keys and policy are only read.
 */
#ifndef AOR_JWT_H
#define AOR_JWT_H

#include <stddef.h>
#include <stdint.h>
#include "jwk.h"

/* limits (each has a test at limit+1) */
#ifndef AOR_JWT_MAX_TOKEN
#define AOR_JWT_MAX_TOKEN 8192 /* bytes of the compact token */
#endif
#define AOR_JWT_MAX_HEADER 2048  /* decoded bytes of the JOSE header */
#define AOR_JWT_HEADER_DEPTH 2   /* JSON nesting of the header ({"crit":[...]} is 2) */
#define AOR_JWT_PAYLOAD_DEPTH 8  /* JSON nesting of the claims set */
#define AOR_JWT_MAX_KEY_TRIES 64 /* keys tried for a token that names no (known) kid: every fitting key, bounded */
#define AOR_JWT_MAX_SKEW_S 86400 /* clock_skew_s is clamped to [0, this] */
#define AOR_JWT_ID_MAX 256       /* result buffers below, NUL included */

/*
 * Outcomes. Each maps to an HTTP status, a metrics reason label and a fixed description
 * (aor_jwt_reason/_description/_http_status), all static strings without quotes, so the
 * description can go into `WWW-Authenticate: Bearer error="invalid_token", error_description="…"`.
 */
enum aor_jwt_err {
    AOR_JWT_OK = 0,
    AOR_JWT_E_TOO_LARGE = -1,      /* 401 too_large: token or header over its limit */
    AOR_JWT_E_MALFORMED = -2,      /* 401 malformed: not 3 base64url parts, header/claims not a JSON object, duplicates, depth */
    AOR_JWT_E_HEADER = -3,         /* 401 bad_header: crit, b64:false, jwk/jku/x5u/x5c, bad kid */
    AOR_JWT_E_ALG = -4,            /* 401 alg_not_allowed: none, unknown, not in policy, does not fit the key */
    AOR_JWT_E_UNKNOWN_KID = -5,    /* 401 unknown_kid: no key for this token (sets unknown_kid) */
    AOR_JWT_E_SIGNATURE = -6,      /* 401 bad_signature */
    AOR_JWT_E_CLAIMS = -7,         /* 401 invalid_claims: exp missing, a time claim not a number, id claim unusable */
    AOR_JWT_E_EXPIRED = -8,        /* 401 expired */
    AOR_JWT_E_NOT_YET_VALID = -9,  /* 401 not_yet_valid: nbf or iat later than now + skew */
    AOR_JWT_E_ISSUER = -10,        /* 401 wrong_issuer */
    AOR_JWT_E_AUDIENCE = -11,      /* 401 wrong_audience */
    AOR_JWT_E_LIFETIME = -12,      /* 401 lifetime_too_long */
    AOR_JWT_E_MISSING_CLAIM = -13, /* 403 missing_claim: valid token, a required claim is not satisfied */
    AOR_JWT_E_INTERNAL = -14,      /* 500 internal: allocation/library failure or NULL argument; nothing decided */
};
#define AOR_JWT_E_LAST AOR_JWT_E_INTERNAL /* reasons for errors 0..LAST can be pre-registered as label values */

/* claim `name` must hold one of `values`: a string equal to one, an array of strings holding
 * one, or for "scp"/"scope" a space-separated string holding one */
struct aor_jwt_claim_rule {
    const char *name;
    const char *const *values;
    size_t n_values;
};

/* what an issuer accepts; the caller owns every string and array, which must outlive the call */
struct aor_jwt_policy {
    const char *issuer;           /* exact match with `iss`; NULL matches nothing */
    const char *const *audiences; /* `aud` (string or array) must hold one; empty list matches nothing */
    size_t n_audiences;
    const struct aor_jwt_claim_rule *required; /* all must hold (else 403) */
    size_t n_required;
    const char *const *tenant_claims; /* the first PRESENT claim names the tenant; it must be a tenant name (tenant.h) */
    size_t n_tenant_claims;
    int64_t clock_skew_s;   /* tolerance for exp, nbf, iat */
    int64_t max_lifetime_s; /* exp - iat (exp - now without iat) above it is refused; 0 = no limit */
    uint32_t algs;          /* AOR_JWK_ALG_BIT mask; 0 = AOR_JWK_ALGS_ASYMMETRIC */
};

/* filled on every return; the strings in the buffers are only set on success, and on a
 * missing_claim refusal (403: the token is authentic, so its identity is known and logged) */
struct aor_jwt_result {
    int http_status;               /* 0 on success, else 401, 403 or 500 */
    const char *reason;            /* static metrics label: "ok" or one of the reasons above */
    const char *error_description; /* static, safe to show a client; NULL on success */
    int unknown_kid;               /* 1: no key named by kid verified it: the caller may refetch the JWKS */
    int alg;                       /* enum aor_jwk_alg of the header, -1 if not reached */
    int64_t exp;                   /* on success */
    char kid[AOR_JWK_MAX_KID + 1]; /* kid of the key that verified ("" if that key has none) */
    char tenant[AOR_JWT_ID_MAX];   /* "" when none of tenant_claims is present */
    char sub[AOR_JWT_ID_MAX];
    char oid[AOR_JWT_ID_MAX];
    char client_id[AOR_JWT_ID_MAX]; /* azp, else appid */
};

/**
 * Verifies a compact JWS `token` of `len` bytes (need not be NUL-terminated) with `keys`
 * under `policy` at time `now_s` (seconds since the epoch).
 * The header must name an allowed, key-fitting `alg` and may not carry crit, b64:false, jwk,
 * jku, x5u or x5c (refused outright: keys come only from `keys`). A kid selects its key
 * (an alg that does not fit it is refused, no other key is tried); a token without a kid
 * tries up to AOR_JWT_MAX_KEY_TRIES keys that fit the alg; a kid that no key has tries only
 * keys without a kid (a configured secret). When no key named by kid verified the token
 * (unknown kid, or no kid and no key verified), unknown_kid is set: the issuer may have
 * rotated, the caller may refetch its JWKS (single flight, with a cooldown).
 * The claims set is parsed only after the signature verifies.
 * Claims: exp required; nbf, iat optional (iat in the future refused); iss exact; aud; max
 * lifetime; identity claims (sub, oid, azp/appid) must be strings under
 * AOR_JWT_ID_MAX bytes without control characters or the token is refused; the first of
 * tenant_claims that is present must be a tenant name (tenant.h: a non-empty string of
 * [A-Za-z0-9._:@-], at most 128 bytes) or the token is refused (invalid_claims), never
 * passed over for the next claim; then the required claims (403).
 * Returns 0 or an AOR_JWT_E_* code, and fills *result either way.
 */
int aor_jwt_verify(const char *token, size_t len, const struct aor_jwks *keys, const struct aor_jwt_policy *policy, int64_t now_s,
                   struct aor_jwt_result *result);

/**
 * The same checks up to and including the signature, with the payload only required to be
 * strict base64url (it is not parsed: JWS payloads need not be JSON). For conformance tests
 * of the JWS layer; the gateway always calls aor_jwt_verify. `algs` as in the policy.
 */
int aor_jwt_verify_signature(const char *token, size_t len, const struct aor_jwks *keys, uint32_t algs,
                             struct aor_jwt_result *result);

/* static strings and status for an aor_jwt_err (unknown codes map to internal) */
const char *aor_jwt_reason(int err);
const char *aor_jwt_description(int err);
int aor_jwt_http_status(int err);

#endif
