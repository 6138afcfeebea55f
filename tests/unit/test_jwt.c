/*
 * unit tests for auth/jwt.c and auth/jwk.c: every algorithm, the attack catalogue of issue 3,
 * claims, limits at limit+1, JWKS parsing. Keys are generated here with OpenSSL and tokens
 * signed by a small test-side signer, so nothing is trusted from outside the test.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include "jwk.h"
#include "jwt.h"
#include "tenant.h"
#include "test.h"

#define NOW INT64_C(1700000000)
#define ISS "https://login.example.com/tenant-1/v2.0"
#define AUD "api://aoai-router"

/* ---- test-side signer ------------------------------------------------------------- */

struct tkey {
    EVP_PKEY *pk;
    const unsigned char *secret;
    size_t secret_len;
};

static EVP_PKEY *rsa_key, *p256_key, *p384_key, *p521_key, *ed_key, *other_p256;
static unsigned char hsecret[64];
static int pss_saltlen = RSA_PSS_SALTLEN_DIGEST; /* tests vary it to prove the verifier pins it */
static struct aor_jwks *jwks;                    /* rsa1, ec256, ec384, ec521, ed1 */

static char *xprintf(const char *fmt, ...)
{
    va_list ap;
    char *s;
    int n;
    va_start(ap, fmt);
    n = vasprintf(&s, fmt, ap);
    va_end(ap);
    return n < 0 ? NULL : s;
}

static char *b64url(const void *data, size_t n)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const unsigned char *d = data;
    char *out = malloc(n / 3 * 4 + 5), *o = out;
    size_t i;
    for (i = 0; i + 3 <= n; i += 3) {
        unsigned v = (unsigned)d[i] << 16 | (unsigned)d[i + 1] << 8 | d[i + 2];
        *o++ = abc[v >> 18];
        *o++ = abc[(v >> 12) & 63];
        *o++ = abc[(v >> 6) & 63];
        *o++ = abc[v & 63];
    }
    if (n - i == 1) {
        *o++ = abc[d[i] >> 2];
        *o++ = abc[(d[i] & 3) << 4];
    } else if (n - i == 2) {
        unsigned v = (unsigned)d[i] << 8 | d[i + 1];
        *o++ = abc[v >> 10];
        *o++ = abc[(v >> 4) & 63];
        *o++ = abc[(v & 15) << 2];
    }
    *o = '\0';
    return out;
}

static const EVP_MD *md_for(int alg)
{
    switch (alg) {
    case AOR_JWK_RS256:
    case AOR_JWK_PS256:
    case AOR_JWK_ES256:
    case AOR_JWK_HS256:
        return EVP_sha256();
    case AOR_JWK_RS384:
    case AOR_JWK_PS384:
    case AOR_JWK_ES384:
    case AOR_JWK_HS384:
        return EVP_sha384();
    case AOR_JWK_EDDSA:
        return NULL;
    default:
        return EVP_sha512();
    }
}

/* JOSE signature of `in`; returns its size (0 on failure) */
static size_t sign_raw(int alg, const struct tkey *k, const char *in, size_t in_len, unsigned char *sig)
{
    const EVP_MD *md = md_for(alg);
    EVP_MD_CTX *ctx;
    EVP_PKEY_CTX *pctx = NULL;
    unsigned char der[2048];
    size_t der_len = sizeof(der);

    if (alg >= AOR_JWK_HS256) {
        unsigned int n = 0;
        HMAC(md, k->secret, (int)k->secret_len, (const unsigned char *)in, in_len, sig, &n);
        return n;
    }
    ctx = EVP_MD_CTX_new();
    if (EVP_DigestSignInit(ctx, &pctx, md, NULL, k->pk) != 1)
        abort();
    if (alg >= AOR_JWK_PS256 && alg <= AOR_JWK_PS512) {
        EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING);
        EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, pss_saltlen);
    }
    if (EVP_DigestSign(ctx, der, &der_len, (const unsigned char *)in, in_len) != 1)
        abort();
    EVP_MD_CTX_free(ctx);
    if (alg >= AOR_JWK_ES256 && alg <= AOR_JWK_ES512) {
        const unsigned char *p = der;
        ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
        size_t l = alg == AOR_JWK_ES256 ? 32 : alg == AOR_JWK_ES384 ? 48 : 66;
        BN_bn2binpad(ECDSA_SIG_get0_r(es), sig, (int)l);
        BN_bn2binpad(ECDSA_SIG_get0_s(es), sig + l, (int)l);
        ECDSA_SIG_free(es);
        return 2 * l;
    }
    memcpy(sig, der, der_len);
    return der_len;
}

/* b64(header).b64(payload).b64(sig over those) */
static char *tok(int alg, const struct tkey *k, const char *header, const char *payload)
{
    char *h = b64url(header, strlen(header)), *p = b64url(payload, strlen(payload));
    char *input = xprintf("%s.%s", h, p), *s, *out;
    unsigned char sig[2048];
    size_t n = sign_raw(alg, k, input, strlen(input), sig);
    s = b64url(sig, n);
    out = xprintf("%s.%s", input, s);
    free(h);
    free(p);
    free(input);
    free(s);
    return out;
}

static char *hdr(const char *alg, const char *kid)
{
    return kid ? xprintf("{\"alg\":\"%s\",\"kid\":\"%s\",\"typ\":\"JWT\"}", alg, kid)
               : xprintf("{\"alg\":\"%s\",\"typ\":\"JWT\"}", alg);
}

/* a valid claims set with `extra` members appended (",\"x\":1" form) */
static char *claims(const char *extra)
{
    return xprintf("{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":%lld,\"iat\":%lld,\"nbf\":%lld,\"sub\":\"user-1\","
                   "\"oid\":\"oid-1\",\"azp\":\"client-1\",\"tid\":\"tenant-1\",\"roles\":[\"Gateway.Use\"]%s}",
                   (long long)(NOW + 3600), (long long)(NOW - 10), (long long)(NOW - 10), extra ? extra : "");
}

/* token for alg with the test key of that alg and the kid of the JWKS */
static char *std_token(int alg, const char *header, const char *payload)
{
    struct tkey k = {0};
    const char *kid = NULL;
    char *h = NULL, *p = NULL, *t;

    switch (alg) {
    case AOR_JWK_RS256:
    case AOR_JWK_RS384:
    case AOR_JWK_RS512:
    case AOR_JWK_PS256:
    case AOR_JWK_PS384:
    case AOR_JWK_PS512:
        k.pk = rsa_key, kid = "rsa1";
        break;
    case AOR_JWK_ES256:
        k.pk = p256_key, kid = "ec256";
        break;
    case AOR_JWK_ES384:
        k.pk = p384_key, kid = "ec384";
        break;
    case AOR_JWK_ES512:
        k.pk = p521_key, kid = "ec521";
        break;
    case AOR_JWK_EDDSA:
        k.pk = ed_key, kid = "ed1";
        break;
    default:
        k.secret = hsecret, k.secret_len = alg == AOR_JWK_HS256 ? 32 : alg == AOR_JWK_HS384 ? 48 : 64;
        kid = "hs";
    }
    if (header == NULL)
        header = h = hdr(aor_jwk_alg_name(alg), kid);
    if (payload == NULL)
        payload = p = claims(NULL);
    t = tok(alg, &k, header, payload);
    free(h);
    free(p);
    return t;
}

/* ---- JWK export ------------------------------------------------------------------- */

static char *bn_b64(EVP_PKEY *pk, const char *param, int pad)
{
    BIGNUM *bn = NULL;
    unsigned char buf[1100];
    int n;
    char *s;
    EVP_PKEY_get_bn_param(pk, param, &bn);
    n = pad ? BN_bn2binpad(bn, buf, pad) : BN_bn2bin(bn, buf);
    s = b64url(buf, (size_t)n);
    BN_free(bn);
    return s;
}

static char *jwk_rsa(EVP_PKEY *pk, const char *kid, const char *extra)
{
    char *n = bn_b64(pk, OSSL_PKEY_PARAM_RSA_N, 0), *e = bn_b64(pk, OSSL_PKEY_PARAM_RSA_E, 0);
    char *s =
        xprintf("{\"kty\":\"RSA\",\"kid\":\"%s\",\"use\":\"sig\",\"n\":\"%s\",\"e\":\"%s\"%s}", kid, n, e, extra ? extra : "");
    free(n);
    free(e);
    return s;
}

static char *jwk_ec(EVP_PKEY *pk, const char *crv, int l, const char *kid, const char *extra)
{
    char *x = bn_b64(pk, OSSL_PKEY_PARAM_EC_PUB_X, l), *y = bn_b64(pk, OSSL_PKEY_PARAM_EC_PUB_Y, l);
    char *s = kid ? xprintf("{\"kty\":\"EC\",\"kid\":\"%s\",\"crv\":\"%s\",\"x\":\"%s\",\"y\":\"%s\"%s}", kid, crv, x, y,
                            extra ? extra : "")
                  : xprintf("{\"kty\":\"EC\",\"crv\":\"%s\",\"x\":\"%s\",\"y\":\"%s\"%s}", crv, x, y, extra ? extra : "");
    free(x);
    free(y);
    return s;
}

static char *jwk_ed(EVP_PKEY *pk, const char *kid)
{
    unsigned char raw[32];
    size_t n = sizeof(raw);
    char *x, *s;
    EVP_PKEY_get_raw_public_key(pk, raw, &n);
    x = b64url(raw, n);
    s = xprintf("{\"kty\":\"OKP\",\"kid\":\"%s\",\"crv\":\"Ed25519\",\"x\":\"%s\"}", kid, x);
    free(x);
    return s;
}

static struct aor_jwks *parse(const char *doc, unsigned flags, int *rc, struct aor_jwks_stats *st)
{
    struct aor_jwks *set = NULL;
    *rc = aor_jwks_parse(doc, strlen(doc), flags, &set, st);
    return set;
}

/* ---- policy ----------------------------------------------------------------------- */

static const char *const audiences[] = {AUD, "api://second"};
static const char *const tenant_claims[] = {"tid", "azp", "sub"};
static const char *const role_values[] = {"Gateway.Use"};
static const struct aor_jwt_claim_rule roles_rule[] = {{"roles", role_values, 1}};
static const struct aor_jwt_claim_rule scp_rule[] = {{"scp", role_values, 1}};

static struct aor_jwt_policy policy(void)
{
    struct aor_jwt_policy p = {0};
    p.issuer = ISS;
    p.audiences = audiences;
    p.n_audiences = 2;
    p.tenant_claims = tenant_claims;
    p.n_tenant_claims = 3;
    p.clock_skew_s = 60;
    p.max_lifetime_s = 86400;
    return p;
}

static int run_with(char *token, const struct aor_jwks *keys, const struct aor_jwt_policy *pol, struct aor_jwt_result *res)
{
    int rc = aor_jwt_verify(token, strlen(token), keys, pol, NOW, res);
    free(token);
    return rc;
}

/* verifies with the JWKS and the default policy */
static int run(char *token, struct aor_jwt_result *res)
{
    struct aor_jwt_policy pol = policy();
    return run_with(token, jwks, &pol, res);
}

static int run_claims(const char *payload, struct aor_jwt_result *res)
{
    return run(std_token(AOR_JWK_ES256, NULL, payload), res);
}

/* ---- tests ------------------------------------------------------------------------ */

static void test_every_alg(void)
{
    struct aor_jwt_result r;
    int alg;

    for (alg = AOR_JWK_RS256; alg <= AOR_JWK_EDDSA; ++alg) {
        CHECK_EQ_INT(run(std_token(alg, NULL, NULL), &r), 0);
        CHECK_EQ_INT(r.http_status, 0);
        CHECK_EQ_STR(r.reason, "ok");
        CHECK(r.error_description == NULL);
        CHECK_EQ_INT(r.alg, alg);
        CHECK_EQ_STR(r.tenant, "tenant-1");
        CHECK_EQ_STR(r.sub, "user-1");
        CHECK_EQ_STR(r.oid, "oid-1");
        CHECK_EQ_STR(r.client_id, "client-1");
        CHECK_EQ_INT(r.exp, NOW + 3600);
        CHECK_EQ_INT(r.unknown_kid, 0);
    }
    CHECK_EQ_INT(run(std_token(AOR_JWK_RS256, NULL, NULL), &r), 0);
    CHECK_EQ_STR(r.kid, "rsa1");
    CHECK_EQ_INT(run(std_token(AOR_JWK_ES512, NULL, NULL), &r), 0);
    CHECK_EQ_STR(r.kid, "ec521");
    CHECK_EQ_INT(run(std_token(AOR_JWK_EDDSA, NULL, NULL), &r), 0);
    CHECK_EQ_STR(r.kid, "ed1");

    /* HMAC: only from a configured secret, only when the policy lists the HS algorithm */
    for (alg = AOR_JWK_HS256; alg <= AOR_JWK_HS512; ++alg) {
        size_t len = alg == AOR_JWK_HS256 ? 32 : alg == AOR_JWK_HS384 ? 48 : 64;
        struct aor_jwks *hs = NULL;
        struct aor_jwt_policy pol = policy();
        CHECK_EQ_INT(aor_jwks_new_hmac(alg, hsecret, len, "hs", &hs), 0);
        pol.algs = AOR_JWK_ALG_BIT(alg);
        CHECK_EQ_INT(run_with(std_token(alg, NULL, NULL), hs, &pol, &r), 0);
        CHECK_EQ_STR(r.kid, "hs");
        CHECK_EQ_STR(r.tenant, "tenant-1");
        /* the default policy is asymmetric only */
        pol.algs = 0;
        CHECK_EQ_INT(run_with(std_token(alg, NULL, NULL), hs, &pol, &r), AOR_JWT_E_ALG);
        aor_jwks_release(hs);
    }
}

static void test_alg_none(void)
{
    static const char *const spellings[] = {"none", "None", "NONE", "nOnE"};
    struct aor_jwt_result r;
    size_t i;

    for (i = 0; i != sizeof(spellings) / sizeof(spellings[0]); ++i) {
        char *h = xprintf("{\"alg\":\"%s\",\"kid\":\"rsa1\"}", spellings[i]), *p = claims(NULL);
        char *hb = b64url(h, strlen(h)), *pb = b64url(p, strlen(p));
        struct aor_jwt_policy pol = policy();
        /* unsigned (empty signature) and with some signature bytes */
        CHECK_EQ_INT(run(xprintf("%s.%s.", hb, pb), &r), AOR_JWT_E_ALG);
        CHECK_EQ_INT(r.http_status, 401);
        CHECK_EQ_STR(r.reason, "alg_not_allowed");
        CHECK_EQ_INT(run(xprintf("%s.%s.AAAA", hb, pb), &r), AOR_JWT_E_ALG);
        pol.algs = AOR_JWK_ALGS_ALL;
        CHECK_EQ_INT(run_with(xprintf("%s.%s.", hb, pb), jwks, &pol, &r), AOR_JWT_E_ALG);
        free(h), free(p), free(hb), free(pb);
    }
    /* other ways of saying nothing: missing alg, alg not a string, lower-case names */
    CHECK_EQ_INT(run(std_token(AOR_JWK_RS256, "{\"kid\":\"rsa1\"}", NULL), &r), AOR_JWT_E_ALG);
    CHECK_EQ_INT(run(std_token(AOR_JWK_RS256, "{\"alg\":null,\"kid\":\"rsa1\"}", NULL), &r), AOR_JWT_E_ALG);
    CHECK_EQ_INT(run(std_token(AOR_JWK_RS256, "{\"alg\":\"rs256\",\"kid\":\"rsa1\"}", NULL), &r), AOR_JWT_E_ALG);
    CHECK_EQ_INT(aor_jwk_alg_from_name("none", 4), -1);
    CHECK_EQ_INT(aor_jwk_alg_from_name("RS256", 5), AOR_JWK_RS256);
    CHECK_EQ_INT(aor_jwk_alg_from_name("RS2560", 6), -1);
}

/* HS256 with the RSA public key (PEM, and DER) as the secret: the libjwt 1.10 hole */
static void test_hs256_with_rsa_public_key(void)
{
    struct aor_jwt_result r;
    struct aor_jwt_policy all = policy();
    BIO *bio = BIO_new(BIO_s_mem());
    char *pem;
    long pem_len;
    struct tkey k = {0};
    char *h, *p = claims(NULL);

    PEM_write_bio_PUBKEY(bio, rsa_key);
    pem_len = BIO_get_mem_data(bio, &pem);
    k.secret = (const unsigned char *)pem;
    k.secret_len = (size_t)pem_len;
    all.algs = AOR_JWK_ALGS_ALL;

    h = hdr("HS256", "rsa1");
    CHECK_EQ_INT(run(tok(AOR_JWK_HS256, &k, h, p), &r), AOR_JWT_E_ALG);
    /* even when the policy allows HS256, an RSA key never verifies an HMAC */
    CHECK_EQ_INT(run_with(tok(AOR_JWK_HS256, &k, h, p), jwks, &all, &r), AOR_JWT_E_ALG);
    CHECK_EQ_INT(r.unknown_kid, 0);
    free(h);
    /* without a kid there is no HMAC key to try at all */
    h = hdr("HS256", NULL);
    CHECK_EQ_INT(run_with(tok(AOR_JWK_HS256, &k, h, p), jwks, &all, &r), AOR_JWT_E_UNKNOWN_KID);
    free(h);
    /* with a trailing newline stripped, too */
    k.secret_len--;
    h = hdr("HS256", "rsa1");
    CHECK_EQ_INT(run_with(tok(AOR_JWK_HS256, &k, h, p), jwks, &all, &r), AOR_JWT_E_ALG);
    free(h);
    free(p);
    BIO_free(bio);
}

static void test_signature_stripped_and_tampered(void)
{
    struct aor_jwt_result r;
    char *t = std_token(AOR_JWK_RS256, NULL, NULL), *dot = strrchr(t, '.'), *p, *pb, *t2, *first;

    /* stripped: "h.p." and "h.p" */
    dot[1] = '\0';
    CHECK_EQ_INT(aor_jwt_verify(t, strlen(t), jwks, &(struct aor_jwt_policy){0}, NOW, &r), AOR_JWT_E_SIGNATURE);
    {
        struct aor_jwt_policy pol = policy();
        CHECK_EQ_INT(aor_jwt_verify(t, strlen(t), jwks, &pol, NOW, &r), AOR_JWT_E_SIGNATURE);
        CHECK_EQ_STR(r.reason, "bad_signature");
        CHECK_EQ_INT(aor_jwt_verify(t, strlen(t) - 1, jwks, &pol, NOW, &r), AOR_JWT_E_MALFORMED);
    }
    free(t);

    /* payload swapped for another (more generous) one under the original signature */
    t = std_token(AOR_JWK_ES256, NULL, NULL);
    p = claims(",\"admin\":true");
    pb = b64url(p, strlen(p));
    first = strchr(t, '.');
    dot = strrchr(t, '.');
    t2 = xprintf("%.*s.%s%s", (int)(first - t), t, pb, dot);
    CHECK_EQ_INT(run(t2, &r), AOR_JWT_E_SIGNATURE);
    /* one character of the signature changed */
    t[strlen(t) - 5] = t[strlen(t) - 5] == 'A' ? 'B' : 'A';
    CHECK_EQ_INT(run(t, &r), AOR_JWT_E_SIGNATURE);
    free(p);
    free(pb);

    /* PS256 header over a PKCS#1 v1.5 signature, the reverse, and PSS with another salt length */
    {
        struct tkey k = {rsa_key, NULL, 0};
        p = claims(NULL);
        CHECK_EQ_INT(run(tok(AOR_JWK_RS256, &k, "{\"alg\":\"PS256\",\"kid\":\"rsa1\"}", p), &r), AOR_JWT_E_SIGNATURE);
        CHECK_EQ_INT(run(tok(AOR_JWK_PS256, &k, "{\"alg\":\"RS256\",\"kid\":\"rsa1\"}", p), &r), AOR_JWT_E_SIGNATURE);
        CHECK_EQ_INT(run(tok(AOR_JWK_RS256, &k, "{\"alg\":\"RS384\",\"kid\":\"rsa1\"}", p), &r), AOR_JWT_E_SIGNATURE);
        pss_saltlen = RSA_PSS_SALTLEN_MAX;
        CHECK_EQ_INT(run(tok(AOR_JWK_PS256, &k, "{\"alg\":\"PS256\",\"kid\":\"rsa1\"}", p), &r), AOR_JWT_E_SIGNATURE);
        pss_saltlen = 0;
        CHECK_EQ_INT(run(tok(AOR_JWK_PS256, &k, "{\"alg\":\"PS256\",\"kid\":\"rsa1\"}", p), &r), AOR_JWT_E_SIGNATURE);
        pss_saltlen = RSA_PSS_SALTLEN_DIGEST;
        CHECK_EQ_INT(run(tok(AOR_JWK_PS256, &k, "{\"alg\":\"PS256\",\"kid\":\"rsa1\"}", p), &r), 0);
        free(p);
    }
}

static void test_psychic_signature(void)
{
    struct aor_jwt_result r;
    const struct aor_jwk *k = aor_jwks_find_kid(jwks, "ec256", 5);
    unsigned char sig[66], order[32];
    char *h = hdr("ES256", "ec256"), *p = claims(NULL), *hb = b64url(h, strlen(h)), *pb = b64url(p, strlen(p)), *sb;
    EC_GROUP *g = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
    const char *msg = "abc";

    BN_bn2binpad(EC_GROUP_get0_order(g), order, 32);
    EC_GROUP_free(g);
    /* r = s = 0 in a token */
    memset(sig, 0, sizeof(sig));
    sb = b64url(sig, 64);
    CHECK_EQ_INT(run(xprintf("%s.%s.%s", hb, pb, sb), &r), AOR_JWT_E_SIGNATURE);
    free(sb);
    /* and at the primitive: r or s zero, equal to n, above n */
    CHECK_EQ_INT(aor_jwk_verify(k, AOR_JWK_ES256, msg, 3, sig, 64), AOR_JWK_E_SIGNATURE);
    sig[63] = 1;
    CHECK_EQ_INT(aor_jwk_verify(k, AOR_JWK_ES256, msg, 3, sig, 64), AOR_JWK_E_SIGNATURE);
    memcpy(sig, order, 32);
    CHECK_EQ_INT(aor_jwk_verify(k, AOR_JWK_ES256, msg, 3, sig, 64), AOR_JWK_E_SIGNATURE);
    sig[0] = 1, sig[31] = 1;
    memcpy(sig + 32, order, 32);
    CHECK_EQ_INT(aor_jwk_verify(k, AOR_JWK_ES256, msg, 3, sig, 64), AOR_JWK_E_SIGNATURE);
    memset(sig, 0xff, sizeof(sig));
    CHECK_EQ_INT(aor_jwk_verify(k, AOR_JWK_ES256, msg, 3, sig, 64), AOR_JWK_E_SIGNATURE);
    /* wrong lengths: 63, 65, DER-encoded */
    CHECK_EQ_INT(aor_jwk_verify(k, AOR_JWK_ES256, msg, 3, sig, 63), AOR_JWK_E_SIGNATURE);
    CHECK_EQ_INT(aor_jwk_verify(k, AOR_JWK_ES256, msg, 3, sig, 65), AOR_JWK_E_SIGNATURE);
    {
        struct tkey tk = {p256_key, NULL, 0};
        unsigned char der[200], raw[64];
        size_t der_len = sizeof(der);
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, p256_key);
        EVP_DigestSign(ctx, der, &der_len, (const unsigned char *)msg, 3);
        EVP_MD_CTX_free(ctx);
        CHECK_EQ_INT(aor_jwk_verify(k, AOR_JWK_ES256, msg, 3, der, der_len), AOR_JWK_E_SIGNATURE);
        CHECK_EQ_INT(sign_raw(AOR_JWK_ES256, &tk, msg, 3, raw), 64);
        CHECK_EQ_INT(aor_jwk_verify(k, AOR_JWK_ES256, msg, 3, raw, 64), 0);
        /* an ES256 key does not verify ES384 or HS256 */
        CHECK_EQ_INT(aor_jwk_verify(k, AOR_JWK_ES384, msg, 3, raw, 64), AOR_JWK_E_ALG);
        CHECK_EQ_INT(aor_jwk_verify(k, AOR_JWK_HS256, msg, 3, raw, 32), AOR_JWK_E_ALG);
    }
    free(h), free(p), free(hb), free(pb);
}

static void test_header_key_params(void)
{
    struct aor_jwt_result r;
    struct tkey attacker = {other_p256, NULL, 0};
    char *ajwk = jwk_ec(other_p256, "P-256", 32, "ec256", NULL), *h, *p = claims(NULL);

    /* embedded jwk with the attacker's own key, signed by it */
    h = xprintf("{\"alg\":\"ES256\",\"kid\":\"ec256\",\"jwk\":%s}", ajwk);
    CHECK_EQ_INT(run(tok(AOR_JWK_ES256, &attacker, h, p), &r), AOR_JWT_E_HEADER);
    CHECK_EQ_STR(r.reason, "bad_header");
    free(h);
    /* refused even when the real key signed it: keys come from configuration only */
    h = xprintf("{\"alg\":\"ES256\",\"kid\":\"ec256\",\"jwk\":%s}", ajwk);
    CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, h, NULL), &r), AOR_JWT_E_HEADER);
    free(h);
    /* embedded jwk without a kid */
    h = xprintf("{\"alg\":\"ES256\",\"jwk\":%s}", ajwk);
    CHECK_EQ_INT(run(tok(AOR_JWK_ES256, &attacker, h, p), &r), AOR_JWT_E_HEADER);
    free(h);
    /* jku pointing at an attacker's JWKS, x5u, x5c */
    CHECK_EQ_INT(
        run(tok(AOR_JWK_ES256, &attacker, "{\"alg\":\"ES256\",\"kid\":\"evil\",\"jku\":\"https://evil.example/jwks\"}", p), &r),
        AOR_JWT_E_HEADER);
    CHECK_EQ_INT(
        run(std_token(AOR_JWK_ES256, "{\"alg\":\"ES256\",\"kid\":\"ec256\",\"jku\":\"https://evil.example/jwks\"}", NULL), &r),
        AOR_JWT_E_HEADER);
    CHECK_EQ_INT(
        run(std_token(AOR_JWK_ES256, "{\"alg\":\"ES256\",\"kid\":\"ec256\",\"x5u\":\"https://evil.example/c.pem\"}", NULL), &r),
        AOR_JWT_E_HEADER);
    CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, "{\"alg\":\"ES256\",\"kid\":\"ec256\",\"x5c\":[\"MIIB\"]}", NULL), &r),
                 AOR_JWT_E_HEADER);
    /* crit with any member, even one we might know; b64:false; b64:true is the default and fine */
    CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, "{\"alg\":\"ES256\",\"kid\":\"ec256\",\"crit\":[\"exp\"],\"exp\":1}", NULL), &r),
                 AOR_JWT_E_HEADER);
    CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, "{\"alg\":\"ES256\",\"kid\":\"ec256\",\"crit\":[]}", NULL), &r), AOR_JWT_E_HEADER);
    CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, "{\"alg\":\"ES256\",\"kid\":\"ec256\",\"b64\":false,\"crit\":[\"b64\"]}", NULL), &r),
                 AOR_JWT_E_HEADER);
    CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, "{\"alg\":\"ES256\",\"kid\":\"ec256\",\"b64\":false}", NULL), &r), AOR_JWT_E_HEADER);
    CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, "{\"alg\":\"ES256\",\"kid\":\"ec256\",\"b64\":true}", NULL), &r), 0);
    /* unknown members are ignored (RFC 7515 §4), x5t is only a thumbprint */
    CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, "{\"alg\":\"ES256\",\"kid\":\"ec256\",\"x5t\":\"abc\",\"zzz\":{\"a\":1}}", NULL), &r),
                 0);
    /* kid must be a non-empty string of bounded size */
    CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, "{\"alg\":\"ES256\",\"kid\":5}", NULL), &r), AOR_JWT_E_HEADER);
    CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, "{\"alg\":\"ES256\",\"kid\":\"\"}", NULL), &r), AOR_JWT_E_HEADER);
    free(ajwk);
    free(p);
}

static void test_kid(void)
{
    struct aor_jwt_result r;
    char kid[AOR_JWK_MAX_KID + 2];
    char *h;

    /* path traversal is just an unknown kid: no file is ever opened */
    CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, "{\"alg\":\"ES256\",\"kid\":\"../../etc/passwd\"}", NULL), &r),
                 AOR_JWT_E_UNKNOWN_KID);
    CHECK_EQ_INT(r.unknown_kid, 1);
    CHECK_EQ_INT(r.http_status, 401);
    CHECK_EQ_STR(r.reason, "unknown_kid");
    CHECK_EQ_STR(r.kid, "");
    CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, "{\"alg\":\"ES256\",\"kid\":\"/dev/zero\"}", NULL), &r), AOR_JWT_E_UNKNOWN_KID);
    CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, "{\"alg\":\"ES256\",\"kid\":\"ec256\\u0000x\"}", NULL), &r), AOR_JWT_E_MALFORMED);
    /* kid at the limit is looked up, at limit+1 refused */
    memset(kid, 'k', sizeof(kid));
    kid[AOR_JWK_MAX_KID] = '\0';
    h = xprintf("{\"alg\":\"ES256\",\"kid\":\"%s\"}", kid);
    CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, h, NULL), &r), AOR_JWT_E_UNKNOWN_KID);
    free(h);
    kid[AOR_JWK_MAX_KID] = 'k';
    kid[AOR_JWK_MAX_KID + 1] = '\0';
    h = xprintf("{\"alg\":\"ES256\",\"kid\":\"%s\"}", kid);
    CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, h, NULL), &r), AOR_JWT_E_HEADER);
    free(h);

    /* the kid's key pins the algorithm family and curve */
    CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, "{\"alg\":\"ES256\",\"kid\":\"rsa1\"}", NULL), &r), AOR_JWT_E_ALG);
    CHECK_EQ_INT(run(std_token(AOR_JWK_ES384, "{\"alg\":\"ES384\",\"kid\":\"ec256\"}", NULL), &r), AOR_JWT_E_ALG);
    CHECK_EQ_INT(run(std_token(AOR_JWK_RS256, "{\"alg\":\"RS256\",\"kid\":\"ed1\"}", NULL), &r), AOR_JWT_E_ALG);
    CHECK_EQ_INT(run(std_token(AOR_JWK_EDDSA, "{\"alg\":\"EdDSA\",\"kid\":\"ec256\"}", NULL), &r), AOR_JWT_E_ALG);
    /* a key signed under the right kid with another key: bad signature, no refetch */
    {
        struct tkey attacker = {other_p256, NULL, 0};
        char *p = claims(NULL);
        CHECK_EQ_INT(run(tok(AOR_JWK_ES256, &attacker, "{\"alg\":\"ES256\",\"kid\":\"ec256\"}", p), &r), AOR_JWT_E_SIGNATURE);
        CHECK_EQ_INT(r.unknown_kid, 0);
        free(p);
    }
    /* no kid: the keys that fit the alg are tried */
    CHECK_EQ_INT(run(std_token(AOR_JWK_ES384, "{\"alg\":\"ES384\"}", NULL), &r), 0);
    CHECK_EQ_STR(r.kid, "ec384");
    CHECK_EQ_INT(run(std_token(AOR_JWK_PS512, "{\"alg\":\"PS512\"}", NULL), &r), 0);
    CHECK_EQ_STR(r.kid, "rsa1");
    CHECK_EQ_INT(run(std_token(AOR_JWK_EDDSA, "{\"alg\":\"EdDSA\"}", NULL), &r), 0);
    /* policy allow-list */
    {
        struct aor_jwt_policy pol = policy();
        pol.algs = AOR_JWK_ALG_BIT(AOR_JWK_RS256);
        CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, NULL, NULL), jwks, &pol, &r), AOR_JWT_E_ALG);
        CHECK_EQ_INT(run_with(std_token(AOR_JWK_PS256, NULL, NULL), jwks, &pol, &r), AOR_JWT_E_ALG);
        CHECK_EQ_INT(run_with(std_token(AOR_JWK_RS256, NULL, NULL), jwks, &pol, &r), 0);
    }
}

/* a token without a kid tries every key that fits (issue 7.10: not only the first 4), bounded by
 * AOR_JWT_MAX_KEY_TRIES, which is a whole JWKS (AOR_JWKS_MAX_KEYS) */
static void test_kidless_bound(void)
{
    struct aor_jwt_result r;
    struct aor_jwt_policy pol = policy();
    EVP_PKEY *decoys[AOR_JWT_MAX_KEY_TRIES - 1];
    char *doc, *list, *real = jwk_ec(p256_key, "P-256", 32, NULL, NULL);
    struct aor_jwks *set;
    size_t n = 0, cap = 1 << 16;
    int i, rc;

    CHECK(AOR_JWT_MAX_KEY_TRIES >= AOR_JWKS_MAX_KEYS);
    list = calloc(1, cap);
    for (i = 0; i != AOR_JWT_MAX_KEY_TRIES - 1; ++i) {
        char *part;
        decoys[i] = EVP_EC_gen("P-256");
        part = jwk_ec(decoys[i], "P-256", 32, NULL, NULL);
        n += (size_t)snprintf(list + n, cap - n, "%s,", part);
        free(part);
        /* the 5th key (the old limit was 4) and the last a full set can hold both verify */
        if (i == 3) {
            doc = xprintf("{\"keys\":[%s%s]}", list, real);
            set = parse(doc, 0, &rc, NULL);
            CHECK_EQ_INT(rc, 0);
            CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, "{\"alg\":\"ES256\"}", NULL), set, &pol, &r), 0);
            CHECK_EQ_STR(r.kid, "");
            CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, "{\"alg\":\"ES256\",\"kid\":\"new\"}", NULL), set, &pol, &r), 0);
            CHECK_EQ_INT(r.unknown_kid, 0);
            aor_jwks_release(set);
            free(doc);
        }
    }
    doc = xprintf("{\"keys\":[%s%s]}", list, real);
    set = parse(doc, 0, &rc, NULL);
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, "{\"alg\":\"ES256\"}", NULL), set, &pol, &r), 0);
    aor_jwks_release(set);
    free(doc);
    /* none of them: refused, and the caller may refetch */
    doc = xprintf("{\"keys\":[%.*s]}", (int)(n - 1), list);
    set = parse(doc, 0, &rc, NULL);
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, "{\"alg\":\"ES256\"}", NULL), set, &pol, &r), AOR_JWT_E_SIGNATURE);
    CHECK_EQ_INT(r.unknown_kid, 1);
    aor_jwks_release(set);
    free(doc);
    for (i = 0; i != AOR_JWT_MAX_KEY_TRIES - 1; ++i)
        EVP_PKEY_free(decoys[i]);
    free(list);
    free(real);

    /* an HMAC secret without a kid serves tokens with any kid; with a kid, only that kid */
    {
        struct aor_jwks *hs = NULL;
        pol.algs = AOR_JWK_ALGS_HMAC;
        CHECK_EQ_INT(aor_jwks_new_hmac(AOR_JWK_HS256, hsecret, 32, NULL, &hs), 0);
        CHECK_EQ_INT(run_with(std_token(AOR_JWK_HS256, "{\"alg\":\"HS256\",\"kid\":\"whatever\"}", NULL), hs, &pol, &r), 0);
        CHECK_EQ_INT(run_with(std_token(AOR_JWK_HS256, "{\"alg\":\"HS256\"}", NULL), hs, &pol, &r), 0);
        /* pinned: the same secret does not verify HS384 */
        CHECK_EQ_INT(run_with(std_token(AOR_JWK_HS384, "{\"alg\":\"HS384\"}", NULL), hs, &pol, &r), AOR_JWT_E_UNKNOWN_KID);
        aor_jwks_release(hs);
        CHECK_EQ_INT(aor_jwks_new_hmac(AOR_JWK_HS256, hsecret, 32, "hs", &hs), 0);
        CHECK_EQ_INT(run_with(std_token(AOR_JWK_HS256, "{\"alg\":\"HS256\",\"kid\":\"other\"}", NULL), hs, &pol, &r),
                     AOR_JWT_E_UNKNOWN_KID);
        /* wrong secret */
        {
            unsigned char wrong[32] = {1};
            struct tkey k = {NULL, wrong, sizeof(wrong)};
            char *p = claims(NULL);
            CHECK_EQ_INT(run_with(tok(AOR_JWK_HS256, &k, "{\"alg\":\"HS256\",\"kid\":\"hs\"}", p), hs, &pol, &r),
                         AOR_JWT_E_SIGNATURE);
            free(p);
        }
        aor_jwks_release(hs);
    }
}

static void test_times(void)
{
    struct aor_jwt_result r;
    char *p;

#define TIMES(exp, iat, nbf) xprintf("{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":%lld%s%s}", (long long)(exp), iat, nbf)
    /* exp: refused once now >= exp + skew (60 s) */
    p = TIMES(NOW - 61, "", "");
    CHECK_EQ_INT(run_claims(p, &r), AOR_JWT_E_EXPIRED);
    CHECK_EQ_STR(r.reason, "expired");
    CHECK_EQ_STR(r.error_description, "token is expired");
    free(p);
    p = TIMES(NOW - 60, "", "");
    CHECK_EQ_INT(run_claims(p, &r), AOR_JWT_E_EXPIRED);
    free(p);
    p = TIMES(NOW - 59, "", "");
    CHECK_EQ_INT(run_claims(p, &r), 0);
    CHECK_EQ_STR(r.tenant, "");
    free(p);
    /* exp required, a number (integer or real), within ±2^53 */
    CHECK_EQ_INT(run_claims("{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\"}", &r), AOR_JWT_E_CLAIMS);
    CHECK_EQ_STR(r.reason, "invalid_claims");
    CHECK_EQ_INT(run_claims("{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":\"1800000000\"}", &r), AOR_JWT_E_CLAIMS);
    CHECK_EQ_INT(run_claims("{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":true}", &r), AOR_JWT_E_CLAIMS);
    CHECK_EQ_INT(run_claims("{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":1e300}", &r), AOR_JWT_E_CLAIMS);
    CHECK_EQ_INT(run_claims("{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":9223372036854775807}", &r), AOR_JWT_E_CLAIMS);
    CHECK_EQ_INT(run_claims("{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":-9223372036854775807}", &r), AOR_JWT_E_CLAIMS);
    CHECK_EQ_INT(run_claims("{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":1700003600.5}", &r), 0);
    CHECK_EQ_INT(r.exp, NOW + 3600);
    CHECK_EQ_INT(run_claims("{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":1700000000.5}", &r), 0);
    CHECK_EQ_INT(run_claims("{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":1699999900.5}", &r), AOR_JWT_E_EXPIRED);

    /* nbf in the future beyond the skew */
    p = xprintf("{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":%lld,\"nbf\":%lld}", (long long)(NOW + 600),
                (long long)(NOW + 61));
    CHECK_EQ_INT(run_claims(p, &r), AOR_JWT_E_NOT_YET_VALID);
    CHECK_EQ_STR(r.reason, "not_yet_valid");
    free(p);
    p = xprintf("{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":%lld,\"nbf\":%lld}", (long long)(NOW + 600),
                (long long)(NOW + 60));
    CHECK_EQ_INT(run_claims(p, &r), 0);
    free(p);
    CHECK_EQ_INT(run_claims("{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":1700000600,\"nbf\":\"0\"}", &r), AOR_JWT_E_CLAIMS);
    /* iat in the future beyond the skew */
    p = xprintf("{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":%lld,\"iat\":%lld}", (long long)(NOW + 600),
                (long long)(NOW + 61));
    CHECK_EQ_INT(run_claims(p, &r), AOR_JWT_E_NOT_YET_VALID);
    free(p);
    p = xprintf("{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":%lld,\"iat\":%lld}", (long long)(NOW + 600),
                (long long)(NOW + 60));
    CHECK_EQ_INT(run_claims(p, &r), 0);
    free(p);
    CHECK_EQ_INT(run_claims("{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":1700000600,\"iat\":null}", &r), AOR_JWT_E_CLAIMS);

    /* lifetime: exp - iat, or exp - now without iat, above 86400 */
    p = xprintf("{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":%lld,\"iat\":%lld}", (long long)(NOW + 86401), (long long)NOW);
    CHECK_EQ_INT(run_claims(p, &r), AOR_JWT_E_LIFETIME);
    CHECK_EQ_STR(r.reason, "lifetime_too_long");
    free(p);
    p = xprintf("{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":%lld,\"iat\":%lld}", (long long)(NOW + 86400), (long long)NOW);
    CHECK_EQ_INT(run_claims(p, &r), 0);
    free(p);
    p = xprintf("{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":%lld}", (long long)(NOW + 86401));
    CHECK_EQ_INT(run_claims(p, &r), AOR_JWT_E_LIFETIME);
    free(p);
    /* an old iat makes a long-lived token visible even though little of it remains */
    p = xprintf("{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":%lld,\"iat\":%lld}", (long long)(NOW + 10),
                (long long)(NOW - 90000));
    CHECK_EQ_INT(run_claims(p, &r), AOR_JWT_E_LIFETIME);
    /* no limit configured */
    {
        struct aor_jwt_policy pol = policy();
        pol.max_lifetime_s = 0;
        CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, NULL, p), jwks, &pol, &r), 0);
        /* skew is clamped, negative is 0 */
        pol.clock_skew_s = -5;
        free(p);
        p = TIMES(NOW, "", "");
        CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, NULL, p), jwks, &pol, &r), AOR_JWT_E_EXPIRED);
        free(p);
        p = TIMES(NOW + 1, "", "");
        CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, NULL, p), jwks, &pol, &r), 0);
        pol.clock_skew_s = INT64_MAX;
        free(p);
        p = TIMES(NOW - AOR_JWT_MAX_SKEW_S, "", "");
        CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, NULL, p), jwks, &pol, &r), AOR_JWT_E_EXPIRED);
        free(p);
        p = TIMES(NOW - AOR_JWT_MAX_SKEW_S + 1, "", "");
        CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, NULL, p), jwks, &pol, &r), 0);
    }
    free(p);
#undef TIMES
}

static void test_iss_aud(void)
{
    struct aor_jwt_result r;
    char *p;

#define CL(iss_aud) xprintf("{%s,\"exp\":%lld}", iss_aud, (long long)(NOW + 600))
    p = CL("\"iss\":\"https://login.example.com/tenant-1\",\"aud\":\"" AUD "\"");
    CHECK_EQ_INT(run_claims(p, &r), AOR_JWT_E_ISSUER);
    CHECK_EQ_STR(r.reason, "wrong_issuer");
    free(p);
    p = CL("\"iss\":\"" ISS "/\",\"aud\":\"" AUD "\"");
    CHECK_EQ_INT(run_claims(p, &r), AOR_JWT_E_ISSUER);
    free(p);
    p = CL("\"iss\":\"HTTPS://LOGIN.EXAMPLE.COM/tenant-1/v2.0\",\"aud\":\"" AUD "\"");
    CHECK_EQ_INT(run_claims(p, &r), AOR_JWT_E_ISSUER);
    free(p);
    p = CL("\"aud\":\"" AUD "\"");
    CHECK_EQ_INT(run_claims(p, &r), AOR_JWT_E_ISSUER);
    free(p);
    p = CL("\"iss\":[\"" ISS "\"],\"aud\":\"" AUD "\"");
    CHECK_EQ_INT(run_claims(p, &r), AOR_JWT_E_ISSUER);
    free(p);

    p = CL("\"iss\":\"" ISS "\",\"aud\":\"api://other-app\"");
    CHECK_EQ_INT(run_claims(p, &r), AOR_JWT_E_AUDIENCE);
    CHECK_EQ_STR(r.reason, "wrong_audience");
    free(p);
    p = CL("\"iss\":\"" ISS "\",\"aud\":[\"api://other-app\",\"api://aoai-router/\"]");
    CHECK_EQ_INT(run_claims(p, &r), AOR_JWT_E_AUDIENCE);
    free(p);
    p = CL("\"iss\":\"" ISS "\",\"aud\":[]");
    CHECK_EQ_INT(run_claims(p, &r), AOR_JWT_E_AUDIENCE);
    free(p);
    p = CL("\"iss\":\"" ISS "\"");
    CHECK_EQ_INT(run_claims(p, &r), AOR_JWT_E_AUDIENCE);
    free(p);
    p = CL("\"iss\":\"" ISS "\",\"aud\":[[\"" AUD "\"]]");
    CHECK_EQ_INT(run_claims(p, &r), AOR_JWT_E_AUDIENCE);
    free(p);
    p = CL("\"iss\":\"" ISS "\",\"aud\":[\"api://other-app\",\"api://second\"]");
    CHECK_EQ_INT(run_claims(p, &r), 0);
    free(p);
    p = CL("\"iss\":\"" ISS "\",\"aud\":[1,\"" AUD "\"]");
    CHECK_EQ_INT(run_claims(p, &r), 0);
    free(p);

    /* a policy without issuer or audiences accepts nothing */
    {
        struct aor_jwt_policy pol = policy();
        pol.issuer = NULL;
        CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, NULL, NULL), jwks, &pol, &r), AOR_JWT_E_ISSUER);
        pol = policy();
        pol.n_audiences = 0;
        CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, NULL, NULL), jwks, &pol, &r), AOR_JWT_E_AUDIENCE);
    }
#undef CL
}

static void test_required_claims_and_tenant(void)
{
    struct aor_jwt_result r;
    struct aor_jwt_policy pol = policy();
    char *p;

#define CL(extra) xprintf("{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":%lld%s}", (long long)(NOW + 600), extra)
    pol.required = roles_rule;
    pol.n_required = 1;
    p = CL(",\"roles\":[\"Other\"],\"sub\":\"S403\"");
    CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, NULL, p), jwks, &pol, &r), AOR_JWT_E_MISSING_CLAIM);
    CHECK_EQ_INT(r.http_status, 403);
    CHECK_EQ_STR(r.reason, "missing_claim");
    CHECK_EQ_STR(r.sub, "S403");    /* an authentic token refused for a permission keeps its identity (access log) */
    CHECK_EQ_STR(r.tenant, "S403"); /* the tenant claims name it (sub is among the defaults) */
    free(p);
    p = CL("");
    CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, NULL, p), jwks, &pol, &r), AOR_JWT_E_MISSING_CLAIM);
    free(p);
    p = CL(",\"roles\":\"Gateway.User\"");
    CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, NULL, p), jwks, &pol, &r), AOR_JWT_E_MISSING_CLAIM);
    free(p);
    /* roles is not split on spaces */
    p = CL(",\"roles\":\"Reader Gateway.Use\"");
    CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, NULL, p), jwks, &pol, &r), AOR_JWT_E_MISSING_CLAIM);
    free(p);
    p = CL(",\"roles\":[\"Reader\",\"Gateway.Use\"]");
    CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, NULL, p), jwks, &pol, &r), 0);
    free(p);
    p = CL(",\"roles\":\"Gateway.Use\"");
    CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, NULL, p), jwks, &pol, &r), 0);
    free(p);
    /* 403 only for an otherwise valid token: an expired one stays 401 */
    p = xprintf("{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":%lld}", (long long)(NOW - 3600));
    CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, NULL, p), jwks, &pol, &r), AOR_JWT_E_EXPIRED);
    CHECK_EQ_INT(r.http_status, 401);
    free(p);

    /* scp: space-separated */
    pol.required = scp_rule;
    p = CL(",\"scp\":\"openid Gateway.Use profile\"");
    CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, NULL, p), jwks, &pol, &r), 0);
    free(p);
    p = CL(",\"scp\":\"  Gateway.Use\"");
    CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, NULL, p), jwks, &pol, &r), 0);
    free(p);
    p = CL(",\"scp\":\"Gateway.User Gateway Use Gateway.Us\"");
    CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, NULL, p), jwks, &pol, &r), AOR_JWT_E_MISSING_CLAIM);
    free(p);
    p = CL(",\"scp\":\"\"");
    CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, NULL, p), jwks, &pol, &r), AOR_JWT_E_MISSING_CLAIM);
    free(p);
    p = CL(",\"scp\":[\"Gateway.Use\"]");
    CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, NULL, p), jwks, &pol, &r), 0);
    free(p);
    /* two rules: both must hold */
    {
        static const char *const tids[] = {"t1", "t2"};
        const struct aor_jwt_claim_rule two[] = {{"roles", role_values, 1}, {"tid", tids, 2}};
        pol.required = two;
        pol.n_required = 2;
        p = CL(",\"roles\":[\"Gateway.Use\"],\"tid\":\"t2\"");
        CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, NULL, p), jwks, &pol, &r), 0);
        CHECK_EQ_STR(r.tenant, "t2");
        free(p);
        p = CL(",\"roles\":[\"Gateway.Use\"],\"tid\":\"t3\"");
        CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, NULL, p), jwks, &pol, &r), AOR_JWT_E_MISSING_CLAIM);
        free(p);
    }
    pol.n_required = 0;

    /* tenant: first present of tid, azp, sub */
    p = CL(",\"tid\":\"T\",\"azp\":\"A\",\"sub\":\"S\"");
    CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, NULL, p), jwks, &pol, &r), 0);
    CHECK_EQ_STR(r.tenant, "T");
    CHECK_EQ_STR(r.client_id, "A");
    CHECK_EQ_STR(r.sub, "S");
    free(p);
    p = CL(",\"azp\":\"A\",\"sub\":\"S\"");
    CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, NULL, p), jwks, &pol, &r), 0);
    CHECK_EQ_STR(r.tenant, "A");
    free(p);
    /* a tenant claim present but no tenant name refuses the token: no fall-through to the next (issue 7.6) */
    {
        static const char *const bad[] = {
            ",\"sub\":\"S\",\"tid\":7",       ",\"sub\":\"S\",\"tid\":\"\"",       ",\"sub\":\"S\",\"tid\":null",
            ",\"sub\":\"S\",\"tid\":[\"T\"]", ",\"sub\":\"S\",\"tid\":{}",         ",\"sub\":\"S\",\"tid\":\"a{b}\"",
            ",\"sub\":\"S\",\"tid\":\"a b\"", ",\"sub\":\"S\",\"tid\":\"q\\\"x\"", ",\"sub\":\"S\",\"tid\":\"\\u00e9\"",
            ",\"sub\":\"S\",\"tid\":\"a/b\"", ",\"sub\":\"S\",\"tid\":true",
        };
        for (size_t i = 0; i != sizeof(bad) / sizeof(bad[0]); ++i) {
            p = CL(bad[i]);
            CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, NULL, p), jwks, &pol, &r), AOR_JWT_E_CLAIMS);
            CHECK_EQ_STR(r.tenant, "");
            free(p);
        }
    }
    p = CL(",\"sub\":\"S\",\"tid\":\"Ab0._:@-z\"");
    CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, NULL, p), jwks, &pol, &r), 0);
    CHECK_EQ_STR(r.tenant, "Ab0._:@-z");
    free(p);
    p = CL(",\"appid\":\"app-1\",\"oid\":\"o\"");
    CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, NULL, p), jwks, &pol, &r), 0);
    CHECK_EQ_STR(r.tenant, "");
    CHECK_EQ_STR(r.client_id, "app-1");
    CHECK_EQ_STR(r.oid, "o");
    free(p);
    /* identity claims that cannot be used as they are refuse the token */
    p = CL(",\"tid\":\"a\\nb\"");
    CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, NULL, p), jwks, &pol, &r), AOR_JWT_E_CLAIMS);
    CHECK_EQ_STR(r.tenant, "");
    free(p);
    {
        char big[AOR_JWT_ID_MAX + 1], *extra;
        memset(big, 't', sizeof(big));
        big[AOR_TENANT_NAME_MAX] = '\0'; /* 128: a tenant name */
        extra = xprintf(",\"tid\":\"%s\"", big);
        p = CL(extra);
        CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, NULL, p), jwks, &pol, &r), 0);
        CHECK_EQ_INT(strlen(r.tenant), AOR_TENANT_NAME_MAX);
        free(p);
        free(extra);
        big[AOR_TENANT_NAME_MAX] = 't';
        big[AOR_TENANT_NAME_MAX + 1] = '\0'; /* 129: refused, not cut */
        extra = xprintf(",\"tid\":\"%s\"", big);
        p = CL(extra);
        CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, NULL, p), jwks, &pol, &r), AOR_JWT_E_CLAIMS);
        free(p);
        free(extra);
        big[AOR_TENANT_NAME_MAX + 1] = 't';
        big[AOR_JWT_ID_MAX - 1] = '\0'; /* 255: a subject may be that long */
        extra = xprintf(",\"tid\":\"t\",\"sub\":\"%s\"", big);
        p = CL(extra);
        CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, NULL, p), jwks, &pol, &r), 0);
        CHECK_EQ_INT(strlen(r.sub), AOR_JWT_ID_MAX - 1);
        free(p);
        free(extra);
        big[AOR_JWT_ID_MAX - 1] = 't';
        big[AOR_JWT_ID_MAX] = '\0'; /* 256: does not */
        extra = xprintf(",\"sub\":\"%s\"", big);
        p = CL(extra);
        CHECK_EQ_INT(run_with(std_token(AOR_JWK_ES256, NULL, p), jwks, &pol, &r), AOR_JWT_E_CLAIMS);
        free(p);
        free(extra);
    }
#undef CL
}

static char *with_part(const char *t, int part, const char *replacement)
{
    const char *d1 = strchr(t, '.'), *d2 = strchr(d1 + 1, '.');
    if (part == 0)
        return xprintf("%s%s", replacement, d1);
    if (part == 1)
        return xprintf("%.*s.%s%s", (int)(d1 - t), t, replacement, d2);
    return xprintf("%.*s.%s", (int)(d2 - t), t, replacement);
}

static void test_encoding(void)
{
    struct aor_jwt_result r;
    char *t = std_token(AOR_JWK_ES256, NULL, NULL), *h, *s;
    const char *d1 = strchr(t, '.'), *d2 = strchr(d1 + 1, '.');
    size_t hl = (size_t)(d1 - t);
    char *bad;

    CHECK_EQ_INT(run(xprintf("%s", t), &r), 0);
    /* not three parts */
    CHECK_EQ_INT(run(xprintf("%s.", t), &r), AOR_JWT_E_MALFORMED);
    CHECK_EQ_INT(run(xprintf("%s.x", t), &r), AOR_JWT_E_MALFORMED);
    CHECK_EQ_INT(run(xprintf("%.*s", (int)(d2 - t), t), &r), AOR_JWT_E_MALFORMED);
    CHECK_EQ_INT(run(xprintf(""), &r), AOR_JWT_E_MALFORMED);
    CHECK_EQ_INT(run(xprintf(".."), &r), AOR_JWT_E_MALFORMED);
    CHECK_EQ_INT(run(xprintf("{\"payload\":\"e30\",\"signatures\":[]}"), &r), AOR_JWT_E_MALFORMED);
    /* base64 (not url) characters, padding, whitespace, NUL, in each part */
    for (int part = 0; part != 3; ++part) {
        const char *start = part == 0 ? t : part == 1 ? d1 + 1 : d2 + 1;
        size_t len = part == 0 ? hl : part == 1 ? (size_t)(d2 - d1 - 1) : strlen(d2 + 1);
        static const char *const inserts[] = {"+", "/", "=", "==", " ", "\n", "\t", "%", "\xc3\xa9", "*"};
        for (size_t i = 0; i != sizeof(inserts) / sizeof(inserts[0]); ++i) {
            char *seg = xprintf("%.*s%s%.*s", (int)(len / 2), start, inserts[i], (int)(len - len / 2), start + len / 2);
            CHECK_EQ_INT(run(with_part(t, part, seg), &r), AOR_JWT_E_MALFORMED);
            free(seg);
            seg = xprintf("%.*s%s", (int)len, start, inserts[i]);
            CHECK_EQ_INT(run(with_part(t, part, seg), &r), AOR_JWT_E_MALFORMED);
            free(seg);
        }
    }
    /* a NUL byte inside the token */
    bad = strdup(t);
    bad[hl / 2] = '\0';
    CHECK_EQ_INT(aor_jwt_verify(bad, strlen(t), jwks, &(struct aor_jwt_policy){0}, NOW, &r), AOR_JWT_E_MALFORMED);
    free(bad);

    /* canonical base64url: no stray low bits in the last character */
    {
        unsigned char out[8];
        CHECK_EQ_INT(aor_jwk_b64url_decode("QQ", 2, out, sizeof(out)), 1);
        CHECK_EQ_INT(aor_jwk_b64url_decode("QR", 2, out, sizeof(out)), -1);
        CHECK_EQ_INT(aor_jwk_b64url_decode("QUE", 3, out, sizeof(out)), 2);
        CHECK_EQ_INT(aor_jwk_b64url_decode("QUF", 3, out, sizeof(out)), -1);
        CHECK_EQ_INT(aor_jwk_b64url_decode("QUFB", 4, out, sizeof(out)), 3);
        CHECK_EQ_INT(aor_jwk_b64url_decode("Q", 1, out, sizeof(out)), -1);
        CHECK_EQ_INT(aor_jwk_b64url_decode("QQ==", 4, out, sizeof(out)), -1);
        CHECK_EQ_INT(aor_jwk_b64url_decode("", 0, out, sizeof(out)), 0);
        CHECK_EQ_INT(aor_jwk_b64url_decode("_-_-", 4, out, sizeof(out)), 3);
        CHECK_EQ_INT(out[0], 0xff);
        CHECK_EQ_INT(aor_jwk_b64url_decode("QUFBQUFBQUFB", 12, out, sizeof(out)), -1); /* 9 bytes > cap 8 */
    }
    /* a header whose encoding ends in a partial group, with a low bit set */
    h = strdup("{\"alg\":\"ES256\",\"kid\":\"ec256\"}"); /* 29 bytes: 39 characters, last holds 2 spare bits */
    s = std_token(AOR_JWK_ES256, h, NULL);
    CHECK_EQ_INT(strchr(s, '.') - s, 39);
    CHECK_EQ_INT(run(xprintf("%s", s), &r), 0);
    {
        char *mod = strdup(s);
        const char *abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        mod[38] = abc[(strchr(abc, mod[38]) - abc) | 1];
        CHECK_EQ_INT(run(mod, &r), AOR_JWT_E_MALFORMED);
    }
    free(s);
    free(h);

    /* header and payload must be JSON objects, once, without duplicate members */
    CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, "[\"ES256\"]", NULL), &r), AOR_JWT_E_MALFORMED);
    CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, "{\"alg\":\"ES256\",\"kid\":\"ec256\"} ", NULL), &r), 0);
    CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, "{\"alg\":\"ES256\",\"kid\":\"ec256\"}{}", NULL), &r), AOR_JWT_E_MALFORMED);
    CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, "{\"alg\":\"ES256\",\"kid\":\"ec256\"", NULL), &r), AOR_JWT_E_MALFORMED);
    CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, "{\"alg\":\"ES256\",\"alg\":\"ES256\",\"kid\":\"ec256\"}", NULL), &r),
                 AOR_JWT_E_MALFORMED);
    CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, "{\"alg\":\"none\",\"kid\":\"ec256\",\"alg\":\"ES256\"}", NULL), &r),
                 AOR_JWT_E_MALFORMED);
    CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, "{\"alg\":\"ES256\",\"kid\":\"x\",\"kid\":\"ec256\"}", NULL), &r),
                 AOR_JWT_E_MALFORMED);
    CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, "{\"alg\":\"ES256\",\"kid\":\"ec256\",\"x\":{\"y\":1}}", NULL), &r), 0);
    CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, "{\"alg\":\"ES256\",\"kid\":\"ec256\",\"x\":{\"y\":[1]}}", NULL), &r),
                 AOR_JWT_E_MALFORMED);
    CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, "{\"alg\":\"ES\\u0032\\u0035\\u0036\",\"kid\":\"ec256\"}", NULL), &r), 0);
    CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, "{\"alg\":\"ES256\",\"kid\":\"ec256\",\"s\":\"\xff\"}", NULL), &r),
                 AOR_JWT_E_MALFORMED);
    CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, NULL, "[1]"), &r), AOR_JWT_E_MALFORMED);
    CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, NULL, ""), &r), AOR_JWT_E_MALFORMED);
    CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, NULL, "not json"), &r), AOR_JWT_E_MALFORMED);
    {
        char *p = claims(",\"sub\":\"dup\"");
        CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, NULL, p), &r), AOR_JWT_E_MALFORMED);
        CHECK_EQ_STR(r.reason, "malformed");
        free(p);
        p = claims(",\"exp\":9999999999");
        CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, NULL, p), &r), AOR_JWT_E_MALFORMED);
        free(p);
        /* claims depth 8 is fine, 9 is not */
        p = claims(",\"n\":[[[[[[[1]]]]]]]");
        CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, NULL, p), &r), 0);
        free(p);
        p = claims(",\"n\":[[[[[[[[1]]]]]]]]");
        CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, NULL, p), &r), AOR_JWT_E_MALFORMED);
        free(p);
        p = claims(",\"n\":\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\\"\"");
        CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, NULL, p), &r), 0);
        free(p);
    }
    CHECK(aor_jwk_json_depth_ok("{}", 2, 1));
    CHECK(!aor_jwk_json_depth_ok("[[]]", 4, 1));
    CHECK(!aor_jwk_json_depth_ok("]", 1, 1));
    CHECK(aor_jwk_json_depth_ok("[\"\\\"[[[[\"]", 11, 1));
    free(t);
}

/* an ES256 token with the claims set padded by `pad` bytes and the header by `hpad` */
static char *padded_token(size_t hpad, size_t pad)
{
    char *h = xprintf("{\"alg\":\"ES256\",\"kid\":\"ec256\",\"h\":\"%.*s\"}", (int)hpad, "xxx");
    char *padding = malloc(pad + 1), *extra, *p, *t;
    memset(padding, 'a', pad);
    padding[pad] = '\0';
    extra = xprintf(",\"pad\":\"%s\"", padding);
    p = claims(extra);
    t = std_token(AOR_JWK_ES256, h, p);
    free(h), free(padding), free(extra), free(p);
    return t;
}

/* a valid token of exactly `target` bytes, or NULL (base64url cannot end on every length) */
static char *token_of_size(size_t target)
{
    for (size_t hpad = 0; hpad != 3; ++hpad) {
        char *t = padded_token(hpad, 0);
        size_t pad = (target - strlen(t)) * 3 / 4 - 4;
        free(t);
        for (;; ++pad) {
            t = padded_token(hpad, pad);
            if (strlen(t) == target)
                return t;
            if (strlen(t) > target) {
                free(t);
                break;
            }
            free(t);
        }
    }
    return NULL;
}

static void test_limits(void)
{
    struct aor_jwt_result r;
    char *t = token_of_size(AOR_JWT_MAX_TOKEN);

    CHECK(t != NULL);
    if (t != NULL)
        CHECK_EQ_INT(run(t, &r), 0);
    t = token_of_size(AOR_JWT_MAX_TOKEN + 1);
    CHECK(t != NULL);
    if (t != NULL) {
        CHECK_EQ_INT(run(t, &r), AOR_JWT_E_TOO_LARGE);
        CHECK_EQ_STR(r.reason, "too_large");
        CHECK_EQ_INT(r.http_status, 401);
    }
    /* header: AOR_JWT_MAX_HEADER decoded bytes fit, one more does not */
    {
        char base[] = "{\"alg\":\"ES256\",\"kid\":\"ec256\",\"h\":\"\"}";
        size_t fill = AOR_JWT_MAX_HEADER - strlen(base);
        char *pad = malloc(fill + 2), *h;
        memset(pad, 'h', fill + 1);
        pad[fill] = '\0';
        h = xprintf("{\"alg\":\"ES256\",\"kid\":\"ec256\",\"h\":\"%s\"}", pad);
        CHECK_EQ_INT(strlen(h), AOR_JWT_MAX_HEADER);
        CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, h, NULL), &r), 0);
        free(h);
        pad[fill] = 'h';
        pad[fill + 1] = '\0';
        h = xprintf("{\"alg\":\"ES256\",\"kid\":\"ec256\",\"h\":\"%s\"}", pad);
        CHECK_EQ_INT(run(std_token(AOR_JWK_ES256, h, NULL), &r), AOR_JWT_E_TOO_LARGE);
        free(h);
        free(pad);
    }
}

static void test_jwks_parse(void)
{
    struct aor_jwks_stats st;
    struct aor_jwks *set;
    struct aor_jwk_info info;
    int rc;
    char *rsa = jwk_rsa(rsa_key, "r", NULL), *ec = jwk_ec(p256_key, "P-256", 32, "e", NULL), *doc;

    /* skipped entries are counted, the rest is usable */
    doc = xprintf("{\"keys\":[%s,{\"kty\":\"oct\",\"k\":\"AAAA\"},{\"kty\":\"foo\"},"
                  "{\"kty\":\"OKP\",\"crv\":\"X25519\",\"x\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"},"
                  "{\"kty\":\"EC\",\"crv\":\"secp256k1\",\"x\":\"AA\",\"y\":\"AA\"},"
                  "{\"kty\":\"RSA\",\"alg\":\"RSA-OAEP\",\"n\":\"AA\",\"e\":\"AQAB\"},%s,7],\"other\":1}",
                  rsa, ec);
    set = parse(doc, 0, &rc, &st);
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_INT(st.entries, 8);
    CHECK_EQ_INT(st.usable, 2);
    CHECK_EQ_INT(st.unsupported, 5);
    CHECK_EQ_INT(st.invalid, 1);
    CHECK_EQ_INT(aor_jwks_count(set), 2);
    aor_jwk_info(aor_jwks_get(set, 0), &info);
    CHECK_EQ_STR(info.kid, "r");
    CHECK_EQ_STR(info.kty, "RSA");
    CHECK(info.crv == NULL);
    CHECK_EQ_INT(info.bits, 2048);
    CHECK_EQ_INT(info.algs, 0x3f);
    aor_jwk_info(aor_jwks_get(set, 1), &info);
    CHECK_EQ_STR(info.crv, "P-256");
    CHECK_EQ_INT(info.algs, AOR_JWK_ALG_BIT(AOR_JWK_ES256));
    CHECK(aor_jwks_get(set, 2) == NULL);
    aor_jwks_release(set);
    free(doc);

    /* private members: the key is refused (it is compromised), not stripped */
    {
        char *priv = jwk_rsa(rsa_key, "r", ",\"d\":\"AQAB\"");
        doc = xprintf("{\"keys\":[%s]}", priv);
        set = parse(doc, 0, &rc, &st);
        CHECK_EQ_INT(rc, AOR_JWKS_E_NO_KEY);
        CHECK(set == NULL);
        CHECK_EQ_INT(st.private_parts, 1);
        free(doc), free(priv);
        priv = jwk_ec(p256_key, "P-256", 32, "e", ",\"d\":\"AQAB\"");
        doc = xprintf("{\"keys\":[%s,%s]}", priv, rsa);
        set = parse(doc, 0, &rc, &st);
        CHECK_EQ_INT(rc, 0);
        CHECK_EQ_INT(st.private_parts, 1);
        CHECK_EQ_INT(st.usable, 1);
        aor_jwks_release(set);
        free(doc), free(priv);
    }
    /* use / key_ops */
    {
        char *enc = jwk_ec(p256_key, "P-256", 32, "e", ",\"use\":\"enc\""),
             *ops = jwk_ec(p256_key, "P-256", 32, "e2", ",\"key_ops\":[\"encrypt\"]"),
             *ok = jwk_ec(p256_key, "P-256", 32, "e3", ",\"key_ops\":[\"sign\",\"verify\"]"),
             *bad = jwk_ec(p256_key, "P-256", 32, "e4", ",\"key_ops\":\"verify\"");
        doc = xprintf("{\"keys\":[%s,%s,%s,%s]}", enc, ops, ok, bad);
        set = parse(doc, 0, &rc, &st);
        CHECK_EQ_INT(rc, 0);
        CHECK_EQ_INT(st.not_for_signing, 2);
        CHECK_EQ_INT(st.invalid, 1);
        CHECK_EQ_INT(st.usable, 1);
        CHECK(aor_jwks_find_kid(set, "e3", 2) != NULL);
        CHECK(aor_jwks_find_kid(set, "e", 1) == NULL);
        aor_jwks_release(set);
        free(doc), free(enc), free(ops), free(ok), free(bad);
    }
    /* alg pins the key; an alg that does not fit the key refuses it */
    {
        char *pinned = jwk_rsa(rsa_key, "rsa1", ",\"alg\":\"PS256\""), *wrong = jwk_rsa(rsa_key, "rsa2", ",\"alg\":\"ES256\""),
             *hs = jwk_rsa(rsa_key, "rsa3", ",\"alg\":\"HS256\""),
             *ec384 = jwk_ec(p256_key, "P-256", 32, "e", ",\"alg\":\"ES384\"");
        struct aor_jwt_result r;
        struct aor_jwt_policy pol = policy();
        doc = xprintf("{\"keys\":[%s,%s,%s,%s]}", pinned, wrong, hs, ec384);
        set = parse(doc, 0, &rc, &st);
        CHECK_EQ_INT(rc, 0);
        CHECK_EQ_INT(st.invalid, 3);
        CHECK_EQ_INT(run_with(std_token(AOR_JWK_PS256, NULL, NULL), set, &pol, &r), 0);
        CHECK_EQ_INT(run_with(std_token(AOR_JWK_RS256, NULL, NULL), set, &pol, &r), AOR_JWT_E_ALG);
        CHECK_EQ_INT(run_with(std_token(AOR_JWK_PS384, NULL, NULL), set, &pol, &r), AOR_JWT_E_ALG);
        aor_jwks_release(set);
        free(doc), free(pinned), free(wrong), free(hs), free(ec384);
    }
    /* RSA: 1024-bit, e = 1, even e, n even, too-long e; EC: off curve, short/long coordinates, wrong curve */
    {
        EVP_PKEY *small = EVP_RSA_gen(1024);
        char *s = jwk_rsa(small, "small", NULL), *n = bn_b64(rsa_key, OSSL_PKEY_PARAM_RSA_N, 0);
        char *x = bn_b64(p256_key, OSSL_PKEY_PARAM_EC_PUB_X, 32), *y = bn_b64(p256_key, OSSL_PKEY_PARAM_EC_PUB_Y, 32);
        char *x48 = bn_b64(p384_key, OSSL_PKEY_PARAM_EC_PUB_X, 48), *y48 = bn_b64(p384_key, OSSL_PKEY_PARAM_EC_PUB_Y, 48);
        char *ybad = strdup(y);
        char *x33, *nz;
        ybad[10] = ybad[10] == 'A' ? 'B' : 'A';
        {
            unsigned char xb[33];
            aor_jwk_b64url_decode(x, strlen(x), xb + 1, 32);
            xb[0] = 0;
            x33 = b64url(xb, 33);
        }
        {
            unsigned char nb[257];
            aor_jwk_b64url_decode(n, strlen(n), nb + 1, 256);
            nb[0] = 0;
            nz = b64url(nb, 257);
        }
        doc = xprintf("{\"keys\":[%s,{\"kty\":\"RSA\",\"n\":\"%s\",\"e\":\"AQ\"},{\"kty\":\"RSA\",\"n\":\"%s\",\"e\":\"AQAA\"},"
                      "{\"kty\":\"RSA\",\"n\":\"%s\",\"e\":\"AQAAAAAAAAAB\"},{\"kty\":\"RSA\",\"n\":\"%s\"},"
                      "{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"},"
                      "{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"},"
                      "{\"kty\":\"EC\",\"crv\":\"P-384\",\"x\":\"%s\",\"y\":\"%s\"},"
                      "{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"},"
                      "{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s=\",\"y\":\"%s\"},"
                      "{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"},"
                      "{\"kty\":\"RSA\",\"kid\":\"nz\",\"n\":\"%s\",\"e\":\"AQAB\"}]}",
                      s, n, n, n, n, x, ybad, x33, y, x, y, x48, y48, x, y, nz);
        set = parse(doc, 0, &rc, &st);
        CHECK_EQ_INT(rc, 0);
        CHECK_EQ_INT(st.invalid, 11);
        CHECK_EQ_INT(st.usable, 1); /* the modulus with a leading zero octet is tolerated */
        CHECK(aor_jwks_find_kid(set, "nz", 2) != NULL);
        aor_jwks_release(set);
        free(doc), free(s), free(n), free(x), free(y), free(x48), free(y48), free(ybad), free(x33), free(nz);
        EVP_PKEY_free(small);
    }
    /* ROCA-fingerprinted modulus (n = k*M + 65537^a mod M, M the primorial up to 167) and a
     * modulus with a small prime factor are refused; real keys pass (every test above) */
    {
        BN_CTX *ctx = BN_CTX_new();
        BIGNUM *m = BN_new(), *g = BN_new(), *a = BN_new(), *k = BN_new(), *n = BN_new(), *n3 = BN_new(), *real = NULL;
        unsigned char buf[300];
        char *nb, *nb3;
        int p, q, prime;
        BN_one(m);
        for (p = 2; p <= 167; ++p) {
            for (prime = 1, q = 2; q * q <= p; ++q)
                prime &= p % q != 0;
            if (prime)
                BN_mul_word(m, (BN_ULONG)p);
        }
        BN_set_word(g, 65537);
        BN_rand(a, 64, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY);
        BN_mod_exp(g, g, a, m, ctx);
        BN_rand(k, 1900, BN_RAND_TOP_ONE, BN_RAND_BOTTOM_ANY);
        BN_mul(n, k, m, ctx);
        BN_add(n, n, g);
        CHECK(BN_is_odd(n) && BN_num_bits(n) > 2048);
        nb = b64url(buf, (size_t)BN_bn2bin(n, buf));
        EVP_PKEY_get_bn_param(rsa_key, OSSL_PKEY_PARAM_RSA_N, &real);
        BN_mul_word(real, 3);
        nb3 = b64url(buf, (size_t)BN_bn2bin(real, buf));
        doc = xprintf("{\"keys\":[{\"kty\":\"RSA\",\"n\":\"%s\",\"e\":\"AQAB\"},{\"kty\":\"RSA\",\"n\":\"%s\",\"e\":\"AQAB\"},%s]}",
                      nb, nb3, rsa);
        set = parse(doc, 0, &rc, &st);
        CHECK_EQ_INT(rc, 0);
        CHECK_EQ_INT(st.invalid, 2);
        CHECK_EQ_INT(st.usable, 1);
        aor_jwks_release(set);
        free(doc), free(nb), free(nb3);
        BN_free(m), BN_free(g), BN_free(a), BN_free(k), BN_free(n), BN_free(n3), BN_free(real);
        BN_CTX_free(ctx);
    }
    /* duplicate kid: both go */
    {
        char *a = jwk_rsa(rsa_key, "same", NULL), *b = jwk_ec(p256_key, "P-256", 32, "same", NULL);
        doc = xprintf("{\"keys\":[%s,%s,%s]}", a, b, ec);
        set = parse(doc, 0, &rc, &st);
        CHECK_EQ_INT(rc, 0);
        CHECK_EQ_INT(st.duplicate_kid, 2);
        CHECK_EQ_INT(st.usable, 1);
        CHECK(aor_jwks_find_kid(set, "same", 4) == NULL);
        aor_jwks_release(set);
        free(doc);
        doc = xprintf("{\"keys\":[%s,%s]}", a, b);
        set = parse(doc, 0, &rc, &st);
        CHECK_EQ_INT(rc, AOR_JWKS_E_NO_KEY);
        free(doc);
        /* a second signing entry under the kid counts even if we cannot use it; an encryption one does not */
        doc = xprintf("{\"keys\":[%s,{\"kty\":\"EC\",\"kid\":\"same\",\"crv\":\"P-256\",\"x\":\"AA\",\"y\":\"AA\"}]}", a);
        set = parse(doc, 0, &rc, &st);
        CHECK_EQ_INT(rc, AOR_JWKS_E_NO_KEY);
        CHECK_EQ_INT(st.duplicate_kid, 1);
        CHECK_EQ_INT(st.invalid, 1);
        free(doc);
        doc = xprintf("{\"keys\":[%s,{\"kty\":\"RSA\",\"kid\":\"same\",\"use\":\"enc\",\"n\":\"AA\",\"e\":\"AQAB\"}]}", a);
        set = parse(doc, 0, &rc, &st);
        CHECK_EQ_INT(rc, 0);
        CHECK_EQ_INT(st.duplicate_kid, 0);
        CHECK(aor_jwks_find_kid(set, "same", 4) != NULL);
        aor_jwks_release(set);
        free(doc), free(a), free(b);
    }
    /* malformed documents */
    CHECK(parse("", 0, &rc, &st) == NULL && rc == AOR_JWKS_E_MALFORMED);
    CHECK(parse("[]", 0, &rc, &st) == NULL && rc == AOR_JWKS_E_MALFORMED);
    CHECK(parse("{\"keys\":{}}", 0, &rc, &st) == NULL && rc == AOR_JWKS_E_MALFORMED);
    CHECK(parse("{\"keys\":[]}", 0, &rc, &st) == NULL && rc == AOR_JWKS_E_NO_KEY);
    CHECK(parse("{\"keys\":[],\"keys\":[]}", 0, &rc, &st) == NULL && rc == AOR_JWKS_E_MALFORMED);
    CHECK(parse("{\"keys\":[{\"kty\":\"RSA\",\"kty\":\"EC\"}]}", 0, &rc, &st) == NULL && rc == AOR_JWKS_E_MALFORMED);
    /* depth 6 passes the pre-check, 7 does not */
    CHECK(parse("{\"keys\":[{\"a\":[[[1]]]}]}", 0, &rc, &st) == NULL && rc == AOR_JWKS_E_NO_KEY);
    CHECK(parse("{\"keys\":[{\"a\":[[[[1]]]]}]}", 0, &rc, &st) == NULL && rc == AOR_JWKS_E_MALFORMED);
    CHECK_EQ_INT(aor_jwks_parse(NULL, 0, 0, &set, NULL), AOR_JWKS_E_MALFORMED);
    CHECK_EQ_INT(aor_jwks_parse("{}", 2, 0, NULL, NULL), AOR_JWKS_E_ARG);

    /* 64 keys pass, 65 do not */
    {
        size_t i, cap = 70 * (strlen(ec) + 1) + 32, used;
        char *big = malloc(cap);
        used = (size_t)sprintf(big, "{\"keys\":[");
        for (i = 0; i != AOR_JWKS_MAX_KEYS; ++i) {
            char *k = jwk_ec(p256_key, "P-256", 32, NULL, NULL);
            used += (size_t)sprintf(big + used, "%s%s", i ? "," : "", k);
            free(k);
        }
        strcpy(big + used, "]}");
        set = parse(big, 0, &rc, &st);
        CHECK_EQ_INT(rc, 0);
        CHECK_EQ_INT(aor_jwks_count(set), AOR_JWKS_MAX_KEYS);
        aor_jwks_release(set);
        used += (size_t)sprintf(big + used, ",%s]}", ec);
        set = parse(big, 0, &rc, &st);
        CHECK_EQ_INT(rc, AOR_JWKS_E_TOO_LARGE);
        CHECK_EQ_INT(st.entries, AOR_JWKS_MAX_KEYS + 1);
        free(big);
    }
    /* a document of exactly AOR_JWKS_MAX_DOC bytes passes, one more byte does not */
    {
        char *big = malloc(AOR_JWKS_MAX_DOC + 2);
        size_t n = (size_t)sprintf(big, "{\"keys\":[%s]}", ec);
        memset(big + n, ' ', AOR_JWKS_MAX_DOC - n);
        big[AOR_JWKS_MAX_DOC] = ' ';
        CHECK_EQ_INT(aor_jwks_parse(big, AOR_JWKS_MAX_DOC, 0, &set, &st), 0);
        aor_jwks_release(set);
        CHECK_EQ_INT(aor_jwks_parse(big, AOR_JWKS_MAX_DOC + 1, 0, &set, &st), AOR_JWKS_E_TOO_LARGE);
        CHECK(set == NULL);
        free(big);
    }
    /* oct entries: only with the flag, and never mixed with asymmetric keys */
    {
        char *k32 = b64url(hsecret, 32), *k31 = b64url(hsecret, 31);
        struct aor_jwt_result r;
        struct aor_jwt_policy pol = policy();
        doc = xprintf("{\"keys\":[{\"kty\":\"oct\",\"kid\":\"hs\",\"k\":\"%s\"}]}", k32);
        CHECK(parse(doc, 0, &rc, &st) == NULL && rc == AOR_JWKS_E_NO_KEY && st.unsupported == 1);
        set = parse(doc, AOR_JWKS_ACCEPT_OCT, &rc, &st);
        CHECK_EQ_INT(rc, 0);
        pol.algs = AOR_JWK_ALGS_HMAC;
        CHECK_EQ_INT(run_with(std_token(AOR_JWK_HS256, NULL, NULL), set, &pol, &r), 0);
        /* a 32-byte secret is too short for HS384 */
        CHECK_EQ_INT(run_with(std_token(AOR_JWK_HS384, "{\"alg\":\"HS384\",\"kid\":\"hs\"}", NULL), set, &pol, &r), AOR_JWT_E_ALG);
        aor_jwks_release(set);
        free(doc);
        doc = xprintf("{\"keys\":[{\"kty\":\"oct\",\"kid\":\"hs\",\"k\":\"%s\"}]}", k31);
        CHECK(parse(doc, AOR_JWKS_ACCEPT_OCT, &rc, &st) == NULL && rc == AOR_JWKS_E_NO_KEY && st.invalid == 1);
        free(doc);
        doc = xprintf("{\"keys\":[{\"kty\":\"oct\",\"kid\":\"hs\",\"k\":\"%s\"},%s]}", k32, ec);
        CHECK(parse(doc, AOR_JWKS_ACCEPT_OCT, &rc, &st) == NULL && rc == AOR_JWKS_E_MIXED);
        free(doc), free(k32), free(k31);
    }
    /* HMAC constructor: minimum secret size is the hash size */
    {
        static const struct {
            int alg;
            size_t len;
            int rc;
        } cases[] = {{AOR_JWK_HS256, 31, AOR_JWKS_E_ARG},
                     {AOR_JWK_HS256, 32, 0},
                     {AOR_JWK_HS384, 47, AOR_JWKS_E_ARG},
                     {AOR_JWK_HS384, 48, 0},
                     {AOR_JWK_HS512, 63, AOR_JWKS_E_ARG},
                     {AOR_JWK_HS512, 64, 0},
                     {AOR_JWK_RS256, 64, AOR_JWKS_E_ARG},
                     {AOR_JWK_ALG_COUNT, 64, AOR_JWKS_E_ARG},
                     {-1, 64, AOR_JWKS_E_ARG}};
        unsigned char big[AOR_JWK_HMAC_MAX_SECRET + 1] = {0};
        for (size_t i = 0; i != sizeof(cases) / sizeof(cases[0]); ++i) {
            set = NULL;
            CHECK_EQ_INT(aor_jwks_new_hmac((enum aor_jwk_alg)cases[i].alg, hsecret, cases[i].len, NULL, &set), cases[i].rc);
            CHECK((set != NULL) == (cases[i].rc == 0));
            aor_jwks_release(set);
        }
        CHECK_EQ_INT(aor_jwks_new_hmac(AOR_JWK_HS256, big, sizeof(big) - 1, NULL, &set), 0);
        aor_jwks_release(set);
        CHECK_EQ_INT(aor_jwks_new_hmac(AOR_JWK_HS256, big, sizeof(big), NULL, &set), AOR_JWKS_E_ARG);
        CHECK_EQ_INT(aor_jwks_new_hmac(AOR_JWK_HS256, hsecret, 32, "", &set), AOR_JWKS_E_ARG);
        CHECK_EQ_INT(aor_jwks_new_hmac(AOR_JWK_HS256, NULL, 32, NULL, &set), AOR_JWKS_E_ARG);
    }
    free(rsa);
    free(ec);
}

/* several threads verify with one shared set; the last reference is dropped on a worker */
struct worker {
    struct aor_jwks *set;
    char *token;
    int ok;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct aor_jwt_policy pol = policy();
    struct aor_jwt_result r;
    int i;
    for (i = 0; i != 50; ++i)
        w->ok += aor_jwt_verify(w->token, strlen(w->token), w->set, &pol, NOW, &r) == 0;
    aor_jwks_release(w->set);
    return NULL;
}

static void test_threads(void)
{
    struct worker w[4];
    pthread_t th[4];
    char *doc, *ec = jwk_ec(p256_key, "P-256", 32, "ec256", NULL), *rsa = jwk_rsa(rsa_key, "rsa1", NULL);
    struct aor_jwks *set;
    int rc, i;

    doc = xprintf("{\"keys\":[%s,%s]}", ec, rsa);
    set = parse(doc, 0, &rc, NULL);
    CHECK_EQ_INT(rc, 0);
    for (i = 0; i != 4; ++i) {
        w[i].set = aor_jwks_retain(set);
        w[i].token = std_token(i % 2 ? AOR_JWK_ES256 : AOR_JWK_PS256, NULL, NULL);
        w[i].ok = 0;
    }
    aor_jwks_release(set); /* the workers hold the only references now */
    for (i = 0; i != 4; ++i)
        pthread_create(&th[i], NULL, worker_main, &w[i]);
    for (i = 0; i != 4; ++i) {
        pthread_join(th[i], NULL);
        CHECK_EQ_INT(w[i].ok, 50);
        free(w[i].token);
    }
    free(doc), free(ec), free(rsa);
}

static void test_outcome_strings(void)
{
    int e;
    struct aor_jwt_result r;
    for (e = 0; e >= AOR_JWT_E_LAST; --e) {
        const char *d = aor_jwt_description(e), *reason = aor_jwt_reason(e);
        CHECK(reason != NULL && strlen(reason) > 0);
        CHECK(e == 0 ? d == NULL : d != NULL && strpbrk(d, "\"\\\r\n") == NULL);
        CHECK(e == 0 ? aor_jwt_http_status(e) == 0 : aor_jwt_http_status(e) >= 401);
    }
    CHECK_EQ_INT(aor_jwt_http_status(AOR_JWT_E_MISSING_CLAIM), 403);
    CHECK_EQ_INT(aor_jwt_http_status(-99), 500);
    CHECK_EQ_INT(aor_jwt_http_status(7), 500);
    CHECK_EQ_STR(aor_jwt_reason(-99), "internal");
    CHECK_EQ_INT(aor_jwt_verify(NULL, 0, jwks, &(struct aor_jwt_policy){0}, NOW, &r), AOR_JWT_E_INTERNAL);
    CHECK_EQ_INT(aor_jwt_verify("a.b.c", 5, NULL, &(struct aor_jwt_policy){0}, NOW, &r), AOR_JWT_E_INTERNAL);
    CHECK_EQ_INT(aor_jwt_verify("a.b.c", 5, jwks, NULL, NOW, &r), AOR_JWT_E_INTERNAL);
    CHECK_EQ_INT(aor_jwt_verify("a.b.c", 5, jwks, &(struct aor_jwt_policy){0}, NOW, NULL), AOR_JWT_E_INTERNAL);
    /* the signature-only entry point does not need a JSON payload */
    {
        struct tkey k = {p256_key, NULL, 0};
        char *t = tok(AOR_JWK_ES256, &k, "{\"alg\":\"ES256\",\"kid\":\"ec256\"}", "not json at all");
        CHECK_EQ_INT(aor_jwt_verify_signature(t, strlen(t), jwks, 0, &r), 0);
        CHECK_EQ_STR(r.kid, "ec256");
        CHECK_EQ_INT(aor_jwt_verify(t, strlen(t), jwks, &(struct aor_jwt_policy){0}, NOW, &r), AOR_JWT_E_MALFORMED);
        free(t);
    }
}

static void setup(void)
{
    char *rsa, *e256, *e384, *e521, *ed, *doc;
    int rc;
    size_t i;

    rsa_key = EVP_RSA_gen(2048);
    p256_key = EVP_EC_gen("P-256");
    p384_key = EVP_EC_gen("P-384");
    p521_key = EVP_EC_gen("P-521");
    other_p256 = EVP_EC_gen("P-256");
    ed_key = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    for (i = 0; i != sizeof(hsecret); ++i)
        hsecret[i] = (unsigned char)(i * 7 + 3);
    rsa = jwk_rsa(rsa_key, "rsa1", NULL);
    e256 = jwk_ec(p256_key, "P-256", 32, "ec256", NULL);
    e384 = jwk_ec(p384_key, "P-384", 48, "ec384", NULL);
    e521 = jwk_ec(p521_key, "P-521", 66, "ec521", NULL);
    ed = jwk_ed(ed_key, "ed1");
    doc = xprintf("{\"keys\":[%s,%s,%s,%s,%s]}", rsa, e256, e384, e521, ed);
    jwks = parse(doc, 0, &rc, NULL);
    if (rc != 0) {
        fprintf(stderr, "setup: JWKS parse failed: %d\n", rc);
        exit(1);
    }
    free(rsa), free(e256), free(e384), free(e521), free(ed), free(doc);
}

static void teardown(void)
{
    aor_jwks_release(jwks);
    EVP_PKEY_free(rsa_key);
    EVP_PKEY_free(p256_key);
    EVP_PKEY_free(p384_key);
    EVP_PKEY_free(p521_key);
    EVP_PKEY_free(other_p256);
    EVP_PKEY_free(ed_key);
}

int main(void)
{
    setup();
    test_every_alg();
    test_alg_none();
    test_hs256_with_rsa_public_key();
    test_signature_stripped_and_tampered();
    test_psychic_signature();
    test_header_key_params();
    test_kid();
    test_kidless_bound();
    test_times();
    test_iss_aud();
    test_required_claims_and_tenant();
    test_encoding();
    test_limits();
    test_jwks_parse();
    test_threads();
    test_outcome_strings();
    teardown();
    return aor_test_done("test_jwt");
}
