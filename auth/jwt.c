/*
 * jwt — compact JWS parsing, key selection and JWT claim checks (see jwt.h).
 * The order is deliberate: bounded structure and strict base64url first, then the header
 * (the only JSON parsed before the signature), then the signature, and only then the
 * claims set, so attacker-chosen payload JSON never reaches the parser unauthenticated.
 */
#include <string.h>
#include <jansson.h>
#include "jwt.h"
#include "tenant.h"

/* decoded sizes: base64url turns 4 characters into 3 bytes */
#define MAX_PAYLOAD (AOR_JWT_MAX_TOKEN / 4 * 3 + 3)

static const struct {
    const char *reason;
    const char *description;
    int status;
} outcomes[] = {
    [0] = {"ok", NULL, 0},
    [-AOR_JWT_E_TOO_LARGE] = {"too_large", "token is too large", 401},
    [-AOR_JWT_E_MALFORMED] = {"malformed", "token is malformed", 401},
    [-AOR_JWT_E_HEADER] = {"bad_header", "token header is not accepted", 401},
    [-AOR_JWT_E_ALG] = {"alg_not_allowed", "token algorithm is not accepted", 401},
    [-AOR_JWT_E_UNKNOWN_KID] = {"unknown_kid", "token signing key is unknown", 401},
    [-AOR_JWT_E_SIGNATURE] = {"bad_signature", "token signature is invalid", 401},
    [-AOR_JWT_E_CLAIMS] = {"invalid_claims", "token claims are invalid", 401},
    [-AOR_JWT_E_EXPIRED] = {"expired", "token is expired", 401},
    [-AOR_JWT_E_NOT_YET_VALID] = {"not_yet_valid", "token is not yet valid", 401},
    [-AOR_JWT_E_ISSUER] = {"wrong_issuer", "token issuer is not accepted", 401},
    [-AOR_JWT_E_AUDIENCE] = {"wrong_audience", "token audience is not accepted", 401},
    [-AOR_JWT_E_LIFETIME] = {"lifetime_too_long", "token lifetime is too long", 401},
    [-AOR_JWT_E_MISSING_CLAIM] = {"missing_claim", "token lacks a required claim", 403},
    [-AOR_JWT_E_INTERNAL] = {"internal", "internal error", 500},
};

static int outcome_index(int err)
{
    return err <= 0 && err >= AOR_JWT_E_LAST ? -err : -AOR_JWT_E_INTERNAL;
}

const char *aor_jwt_reason(int err)
{
    return outcomes[outcome_index(err)].reason;
}

const char *aor_jwt_description(int err)
{
    return outcomes[outcome_index(err)].description;
}

int aor_jwt_http_status(int err)
{
    return outcomes[outcome_index(err)].status;
}

/* what the JWS layer hands to the claims layer; the decoded payload is in the caller's buffer */
struct jws {
    long payload_len;
    const struct aor_jwk *key; /* the key that verified */
};

static int check_header(json_t *h, uint32_t algs, struct aor_jwt_result *res, const char **kid, size_t *kid_len)
{
    static const char *const key_params[] = {"jwk", "jku", "x5u", "x5c"};
    json_t *v;
    size_t i;
    int alg;

    /* exact, case-sensitive names: "none", "None", "NONE", "hs256" are all simply unknown */
    v = json_object_get(h, "alg");
    if (!json_is_string(v) || (alg = aor_jwk_alg_from_name(json_string_value(v), json_string_length(v))) < 0)
        return AOR_JWT_E_ALG;
    res->alg = alg;
    if (!(algs & AOR_JWK_ALG_BIT(alg)))
        return AOR_JWT_E_ALG;
    /* we understand no extension, so any crit is refused (RFC 7515 §4.1.11) */
    if (json_object_get(h, "crit") != NULL)
        return AOR_JWT_E_HEADER;
    if ((v = json_object_get(h, "b64")) != NULL && !json_is_true(v))
        return AOR_JWT_E_HEADER;
    /* keys travel only through configuration, so a token offering one is refused, not ignored */
    for (i = 0; i != sizeof(key_params) / sizeof(key_params[0]); ++i)
        if (json_object_get(h, key_params[i]) != NULL)
            return AOR_JWT_E_HEADER;
    *kid = NULL;
    *kid_len = 0;
    if ((v = json_object_get(h, "kid")) != NULL) {
        if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > AOR_JWK_MAX_KID)
            return AOR_JWT_E_HEADER;
        *kid = json_string_value(v);
        *kid_len = json_string_length(v);
    }
    return 0;
}

/*
 * Tries up to AOR_JWT_MAX_KEY_TRIES keys that fit `alg`: every such key for a token without
 * a kid, only keys without a kid for a token whose kid no key has.
 */
static int verify_any(const struct aor_jwks *keys, int kidless_only, enum aor_jwk_alg alg, const char *input, size_t input_len,
                      const unsigned char *sig, size_t sig_len, const struct aor_jwk **used)
{
    size_t i, n = aor_jwks_count(keys);
    int tries = 0, rc;

    for (i = 0; i != n && tries != AOR_JWT_MAX_KEY_TRIES; ++i) {
        const struct aor_jwk *k = aor_jwks_get(keys, i);
        if ((kidless_only && aor_jwk_kid(k) != NULL) || !(aor_jwk_algs(k) & AOR_JWK_ALG_BIT(alg)))
            continue;
        ++tries;
        if ((rc = aor_jwk_verify(k, alg, input, input_len, sig, sig_len)) == 0) {
            *used = k;
            return 0;
        }
        if (rc == AOR_JWK_E_INTERNAL)
            return AOR_JWT_E_INTERNAL;
    }
    return tries == 0 ? AOR_JWT_E_UNKNOWN_KID : AOR_JWT_E_SIGNATURE;
}

/* everything up to the signature; on success the payload is decoded into payload[] */
static int verify_jws(const char *token, size_t len, const struct aor_jwks *keys, uint32_t algs, struct aor_jwt_result *res,
                      unsigned char *payload, struct jws *out)
{
    const char *dot1, *dot2, *payload_b64, *sig_b64, *kid;
    size_t header_b64_len, payload_b64_len, sig_b64_len, kid_len;
    unsigned char header[AOR_JWT_MAX_HEADER], sig[AOR_JWK_MAX_SIG];
    long header_len, sig_len;
    json_t *h = NULL;
    const struct aor_jwk *key;
    int rc, krc;

    if (len > AOR_JWT_MAX_TOKEN)
        return AOR_JWT_E_TOO_LARGE;
    /* exactly two dots: compact serialization only (no JSON serialization, no JWE's five parts) */
    if ((dot1 = memchr(token, '.', len)) == NULL || (dot2 = memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token))) == NULL ||
        memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token)) != NULL)
        return AOR_JWT_E_MALFORMED;
    header_b64_len = (size_t)(dot1 - token);
    payload_b64 = dot1 + 1;
    payload_b64_len = (size_t)(dot2 - payload_b64);
    sig_b64 = dot2 + 1;
    sig_b64_len = len - (size_t)(sig_b64 - token);

    if (header_b64_len * 3 / 4 > AOR_JWT_MAX_HEADER)
        return AOR_JWT_E_TOO_LARGE;
    if ((header_len = aor_jwk_b64url_decode(token, header_b64_len, header, sizeof(header))) <= 0 ||
        (out->payload_len = aor_jwk_b64url_decode(payload_b64, payload_b64_len, payload, MAX_PAYLOAD)) < 0 ||
        (sig_len = aor_jwk_b64url_decode(sig_b64, sig_b64_len, sig, sizeof(sig))) < 0)
        return AOR_JWT_E_MALFORMED;
    if (!aor_jwk_json_depth_ok((const char *)header, (size_t)header_len, AOR_JWT_HEADER_DEPTH) ||
        (h = json_loadb((const char *)header, (size_t)header_len, JSON_REJECT_DUPLICATES, NULL)) == NULL || !json_is_object(h)) {
        rc = AOR_JWT_E_MALFORMED;
        goto out;
    }
    if ((rc = check_header(h, algs, res, &kid, &kid_len)) != 0)
        goto out;

    /* the signing input is the text as received: ASCII(b64(header) '.' b64(payload)) */
    if (kid != NULL && (key = aor_jwks_find_kid(keys, kid, kid_len)) != NULL) {
        krc = aor_jwk_verify(key, (enum aor_jwk_alg)res->alg, token, (size_t)(dot2 - token), sig, (size_t)sig_len);
        rc = krc == 0                     ? 0
             : krc == AOR_JWK_E_ALG       ? AOR_JWT_E_ALG
             : krc == AOR_JWK_E_SIGNATURE ? AOR_JWT_E_SIGNATURE
                                          : AOR_JWT_E_INTERNAL;
    } else {
        /* an unknown kid may still be served by a key without a kid, e.g. a configured secret */
        rc = verify_any(keys, kid != NULL, (enum aor_jwk_alg)res->alg, token, (size_t)(dot2 - token), sig, (size_t)sig_len, &key);
        /* no key selected by kid did it: the issuer may have rotated to a key we have not fetched yet */
        res->unknown_kid = rc == AOR_JWT_E_UNKNOWN_KID || rc == AOR_JWT_E_SIGNATURE;
    }
    if (rc == 0)
        out->key = key;
out:
    json_decref(h);
    return rc;
}

/* ---- claims ----------------------------------------------------------------------- */

/* 1 and the value of a numeric date claim, 0 if absent, -1 if not a number in ±2^53 */
static int num_claim(json_t *claims, const char *name, int64_t *out)
{
    const double lim = 9007199254740992.0;
    json_t *v = json_object_get(claims, name);
    if (v == NULL)
        return 0;
    if (json_is_integer(v)) {
        json_int_t i = json_integer_value(v);
        if (i > (json_int_t)lim || i < -(json_int_t)lim)
            return -1;
        *out = (int64_t)i;
        return 1;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (!(d <= lim && d >= -lim))
            return -1;
        *out = (int64_t)d; /* fractional seconds do not matter next to the skew */
        return 1;
    }
    return -1;
}

/* 1 if `v` is a string equal to one of list[0..n) */
static int str_in(json_t *v, const char *const *list, size_t n)
{
    size_t i;
    if (!json_is_string(v))
        return 0;
    for (i = 0; i != n; ++i)
        if (list[i] != NULL && strlen(list[i]) == json_string_length(v) &&
            memcmp(list[i], json_string_value(v), json_string_length(v)) == 0)
            return 1;
    return 0;
}

/* 1 if the string or an element of the array is in list */
static int any_in(json_t *v, const char *const *list, size_t n)
{
    size_t i;
    json_t *e;
    if (json_is_array(v)) {
        json_array_foreach(v, i, e)
        {
            if (str_in(e, list, n))
                return 1;
        }
        return 0;
    }
    return str_in(v, list, n);
}

/* 1 if one space-separated word of the string is in list */
static int word_in(json_t *v, const char *const *list, size_t n)
{
    const char *s, *end, *w;
    size_t i;

    if (!json_is_string(v))
        return 0;
    s = json_string_value(v);
    end = s + json_string_length(v);
    while (s < end) {
        while (s < end && *s == ' ')
            ++s;
        for (w = s; s < end && *s != ' '; ++s)
            ;
        for (i = 0; i != n && s > w; ++i)
            if (list[i] != NULL && strlen(list[i]) == (size_t)(s - w) && memcmp(list[i], w, (size_t)(s - w)) == 0)
                return 1;
    }
    return 0;
}

static int rule_holds(json_t *claims, const struct aor_jwt_claim_rule *rule)
{
    json_t *v = json_object_get(claims, rule->name);
    if (v == NULL)
        return 0;
    if (json_is_string(v) && (strcmp(rule->name, "scp") == 0 || strcmp(rule->name, "scope") == 0))
        return word_in(v, rule->values, rule->n_values);
    return any_in(v, rule->values, rule->n_values);
}

/*
 * Copies an identity claim (tenant, sub, oid, client id) if it is a string. These go into
 * quota keys, metrics labels and logs, so one that is too long or carries a control
 * character refuses the token rather than being cut or passed on.
 * Returns 1 copied, 0 absent or not a string, AOR_JWT_E_CLAIMS unusable.
 */
static int copy_id(json_t *claims, const char *name, char *dst)
{
    json_t *v = json_object_get(claims, name);
    size_t i, n;
    const char *s;

    if (!json_is_string(v))
        return 0;
    s = json_string_value(v);
    n = json_string_length(v);
    if (n == 0)
        return 0;
    if (n >= AOR_JWT_ID_MAX)
        return AOR_JWT_E_CLAIMS;
    for (i = 0; i != n; ++i)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return AOR_JWT_E_CLAIMS;
    memcpy(dst, s, n + 1);
    return 1;
}

static int check_claims(json_t *c, const struct aor_jwt_policy *pol, int64_t now, struct aor_jwt_result *res)
{
    int64_t skew = pol->clock_skew_s < 0 ? 0 : pol->clock_skew_s > AOR_JWT_MAX_SKEW_S ? AOR_JWT_MAX_SKEW_S : pol->clock_skew_s;
    int64_t exp, nbf, iat;
    int has_nbf, has_iat, r;
    size_t i;

    /* now beyond ±2^53 s is nonsense; bounding it keeps every sum below in range */
    if (now > INT64_C(1) << 53 || now < -(INT64_C(1) << 53))
        return AOR_JWT_E_INTERNAL;
    if (pol->issuer == NULL || !str_in(json_object_get(c, "iss"), &pol->issuer, 1))
        return AOR_JWT_E_ISSUER;
    if (!any_in(json_object_get(c, "aud"), pol->audiences, pol->n_audiences))
        return AOR_JWT_E_AUDIENCE;
    if (num_claim(c, "exp", &exp) != 1 || (has_nbf = num_claim(c, "nbf", &nbf)) < 0 || (has_iat = num_claim(c, "iat", &iat)) < 0)
        return AOR_JWT_E_CLAIMS;
    if (now >= exp + skew)
        return AOR_JWT_E_EXPIRED;
    if ((has_nbf && nbf > now + skew) || (has_iat && iat > now + skew))
        return AOR_JWT_E_NOT_YET_VALID;
    if (pol->max_lifetime_s > 0 && exp - (has_iat ? iat : now) > pol->max_lifetime_s)
        return AOR_JWT_E_LIFETIME;
    res->exp = exp;

    if (copy_id(c, "sub", res->sub) < 0 || copy_id(c, "oid", res->oid) < 0)
        return AOR_JWT_E_CLAIMS;
    if ((r = copy_id(c, "azp", res->client_id)) < 0 || (r == 0 && copy_id(c, "appid", res->client_id) < 0))
        return AOR_JWT_E_CLAIMS;
    /* the first tenant claim PRESENT names the tenant: one that is present but no tenant name
     * (not a string, empty, outside the rule of tenant.h) refuses the token rather than
     * falling through to the next claim, which an attacker may control more easily */
    for (i = 0; i != pol->n_tenant_claims; ++i) {
        json_t *v = json_object_get(c, pol->tenant_claims[i]);
        if (v == NULL)
            continue;
        if (!json_is_string(v) || !aor_tenant_name_ok(json_string_value(v), json_string_length(v)))
            return AOR_JWT_E_CLAIMS;
        memcpy(res->tenant, json_string_value(v), json_string_length(v) + 1);
        break;
    }
    /* the token is valid from here on: what is still missing is a permission (403) */
    for (i = 0; i != pol->n_required; ++i)
        if (!rule_holds(c, &pol->required[i]))
            return AOR_JWT_E_MISSING_CLAIM;
    return 0;
}

/* ---- entry points ----------------------------------------------------------------- */

static int finish(struct aor_jwt_result *res, int rc, const struct aor_jwk *key)
{
    res->http_status = aor_jwt_http_status(rc);
    res->reason = aor_jwt_reason(rc);
    res->error_description = aor_jwt_description(rc);
    if (rc == AOR_JWT_E_MISSING_CLAIM) {
        res->exp = 0; /* verified, only a permission missing: the identity stays for the access log */
    } else if (rc != 0) {
        res->exp = 0;
        res->kid[0] = res->tenant[0] = res->sub[0] = res->oid[0] = res->client_id[0] = '\0';
    } else if (key != NULL && aor_jwk_kid(key) != NULL) {
        /* a set's kids are at most AOR_JWK_MAX_KID bytes: it fits */
        memcpy(res->kid, aor_jwk_kid(key), strlen(aor_jwk_kid(key)) + 1);
    }
    return rc;
}

static void start(struct aor_jwt_result *res)
{
    memset(res, 0, sizeof(*res));
    res->alg = -1;
}

int aor_jwt_verify_signature(const char *token, size_t len, const struct aor_jwks *keys, uint32_t algs,
                             struct aor_jwt_result *result)
{
    unsigned char payload[MAX_PAYLOAD]; /* decoded only to hold it to strict base64url */
    struct jws jws = {0};
    int rc;

    if (result == NULL)
        return AOR_JWT_E_INTERNAL;
    start(result);
    if (token == NULL || keys == NULL)
        return finish(result, AOR_JWT_E_INTERNAL, NULL);
    rc = verify_jws(token, len, keys, algs == 0 ? AOR_JWK_ALGS_ASYMMETRIC : algs, result, payload, &jws);
    return finish(result, rc, jws.key);
}

int aor_jwt_verify(const char *token, size_t len, const struct aor_jwks *keys, const struct aor_jwt_policy *policy, int64_t now_s,
                   struct aor_jwt_result *result)
{
    unsigned char payload[MAX_PAYLOAD];
    struct jws jws = {0};
    json_t *claims = NULL;
    int rc;

    if (result == NULL)
        return AOR_JWT_E_INTERNAL;
    start(result);
    if (token == NULL || keys == NULL || policy == NULL)
        return finish(result, AOR_JWT_E_INTERNAL, NULL);
    rc = verify_jws(token, len, keys, policy->algs == 0 ? AOR_JWK_ALGS_ASYMMETRIC : policy->algs, result, payload, &jws);
    if (rc != 0)
        return finish(result, rc, NULL);
    if (!aor_jwk_json_depth_ok((const char *)payload, (size_t)jws.payload_len, AOR_JWT_PAYLOAD_DEPTH) ||
        (claims = json_loadb((const char *)payload, (size_t)jws.payload_len, JSON_REJECT_DUPLICATES, NULL)) == NULL ||
        !json_is_object(claims)) {
        rc = AOR_JWT_E_MALFORMED;
        goto out;
    }
    rc = check_claims(claims, policy, now_s, result);
out:
    json_decref(claims);
    return finish(result, rc, jws.key);
}
