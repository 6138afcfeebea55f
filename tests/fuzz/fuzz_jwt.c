/*
 * libFuzzer driver for auth/jwt.c and auth/jwk.c. The low 3 bits of the first byte pick
 * the target, the rest is the input:
 *   0    token -> aor_jwt_verify with a fixed RSA/EC/Ed25519 key set and policy
 *   1    token -> aor_jwt_verify with a fixed HS256 secret
 *   2, 3 JWKS document -> aor_jwks_parse (3: with AOR_JWKS_ACCEPT_OCT)
 *   4    token -> aor_jwt_verify_signature with the asymmetric set, every algorithm
 *   5-7  "header JSON\npayload JSON" -> encoded and HS256-signed here, then aor_jwt_verify:
 *        mutated JSON reaches the header and claims checks past the signature
 * Bits 3-4 of the first byte choose the required claims (none, roles, scp, both), bit 5 a
 * one-hour maximum lifetime.
 * Seed corpus: tests/fuzz/corpus/jwt/ (tokens signed by the matching private keys, which
 * are not kept). Build with clang -fsanitize=fuzzer; with -DAOR_FUZZ_MAIN any compiler
 * builds a main() that runs the files named on the command line once (a regression run).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include "jwk.h"
#include "jwt.h"

#define NOW INT64_C(1700000000)

/* public halves only */
static const char jwks_doc[] =
    "{\"keys\":["
    "{\"kty\":\"RSA\",\"kid\":\"fz-rsa\",\"use\":\"sig\",\"e\":\"AQAB\",\"n\":\"tEKbvZD54ujpuoGLa0RfvK5TGcv86GOdAGRHY9lmg68t_"
    "GZxY1oxGK6"
    "OgaugubwBWEYF5sG366Ah1zhTVdjT2q5f1S753bO9dRIEAjSH-E3DWqIY0k2F1ABcJbGLwXh2TKCKyjJle5Ad5_oH88QvNW5lAxe_H5DXHdk7xx16PIfXxMmAFF"
    "JqUPAqbWfE3hu6fVKR8PfI5q9Axq2R-hTWcAuU6agvhZGoN9tM91_mqBEOH6cWdK88LxkeQ3H_NdFeCZSEuukQX6brCqoqUUwFvg_NLr786CQwtEFwnOoTe_i7nN"
    "IsrHUAIjfadT0kPEjnzHf9mxzxaVY_hA6ZAS5wHw\"},"
    "{\"kty\":\"EC\",\"kid\":\"fz-ec\",\"crv\":\"P-256\",\"x\":\"GZKrAf2gseNwSoLW2LlSzqYnIk9scgHYRHt3QFPb2sw\","
    "\"y\":\"gTcr_d3av_gJLeLYPmm-NLbOyS9wuz8Khx2sZndCG0c\"},"
    "{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"OaCndsh2Q0KSa4OoGTF3xta5DcyRQf72j_yrOllQJ4Y\"}"
    "]}";

/* the seed tokens' HS256 secret: "fuzz-hs256-secret-0123456789abcdef" */
static const char hmac_secret[] = "fuzz-hs256-secret-0123456789abcdef";

static const char *const audiences[] = {"api://fuzz", "api://fuzz-2"};
static const char *const tenant_claims[] = {"tid", "azp", "sub"};
static const char *const role_values[] = {"Fuzz.Use", "Fuzz.Admin"};
static const struct aor_jwt_claim_rule rules[] = {{"roles", role_values, 2}, {"scp", role_values, 2}};

static struct aor_jwks *asym, *hmac;

static void setup(void)
{
    if (asym != NULL)
        return;
    if (aor_jwks_parse(jwks_doc, sizeof(jwks_doc) - 1, 0, &asym, NULL) != 0 ||
        aor_jwks_new_hmac(AOR_JWK_HS256, hmac_secret, sizeof(hmac_secret) - 1, "fz-hs", &hmac) != 0 || aor_jwks_count(asym) != 3) {
        fprintf(stderr, "fuzz_jwt: fixed key sets do not load\n");
        abort();
    }
}

static void check_result(int rc, const struct aor_jwt_result *r)
{
    /* invariants every outcome keeps */
    if (r->reason == NULL || strcmp(r->reason, aor_jwt_reason(rc)) != 0 || r->http_status != aor_jwt_http_status(rc))
        abort();
    if (rc == 0 && (r->error_description != NULL || r->alg < 0))
        abort();
    /* a refused token names nobody, except a missing_claim refusal (403): the token is authentic,
     * so its identity is known and kept for the access log (auth/jwt.h) */
    if (rc != 0 && rc != AOR_JWT_E_MISSING_CLAIM &&
        (r->tenant[0] || r->sub[0] || r->oid[0] || r->client_id[0] || r->kid[0] || r->exp != 0))
        abort();
    if (strnlen(r->tenant, sizeof(r->tenant)) == sizeof(r->tenant) || strnlen(r->kid, sizeof(r->kid)) == sizeof(r->kid))
        abort();
}

static size_t b64url(const uint8_t *d, size_t n, char *out)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t i, o = 0;
    for (i = 0; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)d[i] << 16 | (uint32_t)d[i + 1] << 8 | d[i + 2];
        out[o++] = abc[v >> 18];
        out[o++] = abc[(v >> 12) & 63];
        out[o++] = abc[(v >> 6) & 63];
        out[o++] = abc[v & 63];
    }
    if (n - i == 1) {
        out[o++] = abc[d[i] >> 2];
        out[o++] = abc[(d[i] & 3) << 4];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)d[i] << 8 | d[i + 1];
        out[o++] = abc[v >> 10];
        out[o++] = abc[(v >> 4) & 63];
        out[o++] = abc[(v & 15) << 2];
    }
    return o;
}

/* header JSON '\n' payload JSON -> a compact HS256 token under the fixed secret */
static int sign_and_verify(const char *in, size_t len, const struct aor_jwt_policy *pol, struct aor_jwt_result *r)
{
    const char *nl = memchr(in, '\n', len);
    char tok[AOR_JWT_MAX_TOKEN * 2];
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    size_t hl, n;

    if (nl == NULL || len > AOR_JWT_MAX_TOKEN)
        return 0;
    hl = (size_t)(nl - in);
    n = b64url((const uint8_t *)in, hl, tok);
    tok[n++] = '.';
    n += b64url((const uint8_t *)nl + 1, len - hl - 1, tok + n);
    if (HMAC(EVP_sha256(), hmac_secret, sizeof(hmac_secret) - 1, (const unsigned char *)tok, n, mac, &mac_len) == NULL)
        abort();
    tok[n++] = '.';
    n += b64url(mac, mac_len, tok + n);
    return aor_jwt_verify(tok, n, hmac, pol, NOW, r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct aor_jwt_policy pol = {0};
    struct aor_jwt_result r;
    const char *in;
    size_t len;
    int rc;

    setup();
    if (size == 0)
        return 0;
    in = (const char *)data + 1;
    len = size - 1;
    pol.issuer = "https://issuer.fuzz/";
    pol.audiences = audiences;
    pol.n_audiences = 2;
    pol.tenant_claims = tenant_claims;
    pol.n_tenant_claims = 3;
    /* bits 3-4 of the selector: no required claim, roles, scp, both */
    pol.required = rules + (((data[0] >> 3) & 3) == 2);
    pol.n_required = ((data[0] >> 3) & 3) == 3 ? 2 : ((data[0] >> 3) & 3) != 0;
    pol.clock_skew_s = 60;
    pol.max_lifetime_s = (data[0] >> 5) & 1 ? 3600 : 0;

    switch (data[0] & 7) {
    case 0:
        rc = aor_jwt_verify(in, len, asym, &pol, NOW, &r);
        check_result(rc, &r);
        break;
    case 1:
        pol.algs = AOR_JWK_ALG_BIT(AOR_JWK_HS256);
        rc = aor_jwt_verify(in, len, hmac, &pol, NOW, &r);
        check_result(rc, &r);
        break;
    case 2:
    case 3: {
        struct aor_jwks *set = NULL;
        struct aor_jwks_stats st;
        rc = aor_jwks_parse(in, len, (data[0] & 7) == 3 ? AOR_JWKS_ACCEPT_OCT : 0, &set, &st);
        if ((rc == 0) != (set != NULL) || (rc == 0 && st.usable != aor_jwks_count(set)))
            abort();
        if (set != NULL) {
            size_t i;
            /* use every key once so the verification paths of odd keys run too */
            for (i = 0; i != aor_jwks_count(set); ++i) {
                const struct aor_jwk *k = aor_jwks_get(set, i);
                struct aor_jwk_info info;
                unsigned char sig[132] = {1};
                int a;
                aor_jwk_info(k, &info);
                for (a = 0; a != AOR_JWK_ALG_COUNT; ++a)
                    if (info.algs & AOR_JWK_ALG_BIT(a))
                        (void)aor_jwk_verify(k, (enum aor_jwk_alg)a, in, len, sig, sizeof(sig));
            }
            aor_jwks_release(aor_jwks_retain(set));
            aor_jwks_release(set);
        }
        break;
    }
    case 4:
        rc = aor_jwt_verify_signature(in, len, asym, AOR_JWK_ALGS_ALL, &r);
        check_result(rc, &r);
        break;
    default:
        pol.algs = AOR_JWK_ALG_BIT(AOR_JWK_HS256);
        rc = sign_and_verify(in, len, &pol, &r);
        if (memchr(in, '\n', len) != NULL && len <= AOR_JWT_MAX_TOKEN)
            check_result(rc, &r);
        break;
    }
    return 0;
}

#ifdef AOR_FUZZ_MAIN
/* regression run without libFuzzer: each argument is one input file */
int main(int argc, char **argv)
{
    int i;
    for (i = 1; i < argc; ++i) {
        FILE *f = fopen(argv[i], "rb");
        static uint8_t buf[1 << 20];
        size_t n;
        if (f == NULL) {
            perror(argv[i]);
            return 1;
        }
        n = fread(buf, 1, sizeof(buf), f);
        fclose(f);
        LLVMFuzzerTestOneInput(buf, n);
    }
    fprintf(stderr, "fuzz_jwt: %d inputs ran\n", argc - 1);
    aor_jwks_release(asym);
    aor_jwks_release(hmac);
    return 0;
}
#endif
