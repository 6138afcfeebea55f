/*
 * jwt_bench — what a client's bearer token costs the gateway, per JWS algorithm (issue 3):
 *   cold    aor_jwt_verify: structure, header, signature and claims, as on a token-cache miss
 *           (and, to split that figure, aor_jwk_verify alone: the signature check without the JOSE
 *           parsing and claim checks around it)
 *   cached  aor_tokencache_key + an aor_tokencache_get hit, what check_jwt (auth/auth.c) does
 *           first for every request, and all it does for a token it has already verified
 * Keys are generated and tokens signed here with OpenSSL EVP; the verifier only sees a JWKS
 * document built from the public parts (HS*: a set holding the secret), as the gateway would.
 * Single-threaded: rates are operations per second of this process's CPU time
 * (CLOCK_PROCESS_CPUTIME_ID), i.e. what one core of one worker can do.
 * Every timed verification must return 0 and every timed lookup must hit, or the program
 * exits 1, so the figures are of successful verifications only.
 * Usage: jwt_bench [-d seconds per measurement] [-a ALG[,ALG...]]   (see bench/jwt_bench.md)
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include "jwk.h"
#include "jwt.h"
#include "tokencache.h"

#define DEFAULT_SECONDS 1.0
#define MAX_SECONDS 600.0
#define RSA_BITS 2048
#define HMAC_SECRET_BYTES 64
#define SIG_MAX 512         /* RSA-2048 is 256 bytes, ES512 132 */
#define CACHE_GEN 1         /* the config generation the cached outcomes belong to */
#define CLOCK_EVERY_S 0.005 /* grow a batch until it runs this long, so clock reads stay rare */

enum kind { KIND_RSA, KIND_EC, KIND_OKP, KIND_HMAC };

static const struct spec {
    enum aor_jwk_alg alg;
    enum kind kind;
    const char *group; /* EC: the curve, as JWK crv and OpenSSL group name */
    const char *md;    /* digest for EVP; NULL for EdDSA */
    int pss;
    size_t coord_len; /* EC: bytes of r and of s */
    const char *key_desc;
} specs[] = {
    {AOR_JWK_RS256, KIND_RSA, NULL, "SHA256", 0, 0, "RSA-2048"},
    {AOR_JWK_RS384, KIND_RSA, NULL, "SHA384", 0, 0, "RSA-2048"},
    {AOR_JWK_RS512, KIND_RSA, NULL, "SHA512", 0, 0, "RSA-2048"},
    {AOR_JWK_PS256, KIND_RSA, NULL, "SHA256", 1, 0, "RSA-2048"},
    {AOR_JWK_PS384, KIND_RSA, NULL, "SHA384", 1, 0, "RSA-2048"},
    {AOR_JWK_PS512, KIND_RSA, NULL, "SHA512", 1, 0, "RSA-2048"},
    {AOR_JWK_ES256, KIND_EC, "P-256", "SHA256", 0, 32, "P-256"},
    {AOR_JWK_ES384, KIND_EC, "P-384", "SHA384", 0, 48, "P-384"},
    {AOR_JWK_ES512, KIND_EC, "P-521", "SHA512", 0, 66, "P-521"},
    {AOR_JWK_EDDSA, KIND_OKP, NULL, NULL, 0, 0, "Ed25519"},
    {AOR_JWK_HS256, KIND_HMAC, NULL, "SHA256", 0, 0, "64 B secret"},
    {AOR_JWK_HS384, KIND_HMAC, NULL, "SHA384", 0, 0, "64 B secret"},
    {AOR_JWK_HS512, KIND_HMAC, NULL, "SHA512", 0, 0, "64 B secret"},
};
#define NUM_SPECS (sizeof(specs) / sizeof(specs[0]))

/* the identity every token carries; the policy below accepts exactly it */
struct identity {
    char tid[37], oid[37], azp[37], aud[37];
    char iss[128];
};

struct measure {
    uint64_t ops;
    double cpu_s, wall_s;
};

/* one algorithm: its key, its token, and what was measured. Owns every pointer. */
struct bench_case {
    const struct spec *spec;
    EVP_PKEY *pkey;                          /* asymmetric: the private key, only for signing */
    unsigned char secret[HMAC_SECRET_BYTES]; /* HMAC */
    struct aor_jwks *hmac_keys;              /* HMAC: the set holding the secret */
    const struct aor_jwks *keys;             /* what the token is verified with (not owned for asymmetric) */
    char kid[32];
    char *token;
    size_t token_len;
    const struct aor_jwt_policy *policy;
    struct aor_tokencache *cache; /* not owned */
    int64_t now_s, now_ms;
    int failed_rc; /* the first refusal seen while timing, 0 if none */
    /* the signature alone: the key that verifies, the signing input (the token up to its last dot) */
    const struct aor_jwk *sig_key;
    size_t input_len;
    unsigned char sig[SIG_MAX];
    size_t sig_len;
    struct measure cold, signature, cached;
};

typedef int (*bench_op_cb)(struct bench_case *c);

/* ---- small helpers -------------------------------------------------------------------- */

static void openssl_fail(const char *what)
{
    fprintf(stderr, "jwt_bench: %s failed\n", what);
    ERR_print_errors_fp(stderr);
}

/* base64url without padding into out (room for (len + 2) / 3 * 4 + 1); returns its length */
static size_t b64url(const unsigned char *in, size_t len, char *out)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t i, n = 0;
    uint32_t v;

    for (i = 0; i + 3 <= len; i += 3) {
        v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[n++] = tab[v >> 18];
        out[n++] = tab[v >> 12 & 63];
        out[n++] = tab[v >> 6 & 63];
        out[n++] = tab[v & 63];
    }
    if (len - i == 1) {
        v = (uint32_t)in[i] << 16;
        out[n++] = tab[v >> 18];
        out[n++] = tab[v >> 12 & 63];
    } else if (len - i == 2) {
        v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[n++] = tab[v >> 18];
        out[n++] = tab[v >> 12 & 63];
        out[n++] = tab[v >> 6 & 63];
    }
    out[n] = '\0';
    return n;
}

/* `bytes` random bytes as base64url into out (room for bytes * 4 / 3 + 4); 0 or -1 */
static int random_b64url(size_t bytes, char *out)
{
    unsigned char buf[96];

    if (bytes > sizeof(buf) || RAND_bytes(buf, (int)bytes) != 1)
        return -1;
    b64url(buf, bytes, out);
    return 0;
}

/* a random version-4 UUID, lower case, as Entra ID writes tid/oid/appid; 0 or -1 */
static int random_guid(char out[37])
{
    unsigned char b[16];

    if (RAND_bytes(b, sizeof(b)) != 1)
        return -1;
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2], b[3], b[4], b[5],
             b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
    return 0;
}

/* a BIGNUM parameter of the key as base64url, left-padded to `pad` bytes (0: minimal); NULL on failure */
static char *bn_param_b64url(const EVP_PKEY *pkey, const char *param, size_t pad)
{
    BIGNUM *bn = NULL;
    unsigned char *bin = NULL;
    char *text = NULL;
    int n;

    if (EVP_PKEY_get_bn_param(pkey, param, &bn) != 1)
        goto out;
    n = pad != 0 ? (int)pad : BN_num_bytes(bn);
    if ((bin = malloc((size_t)n)) == NULL || (text = malloc(((size_t)n + 2) / 3 * 4 + 1)) == NULL ||
        BN_bn2binpad(bn, bin, n) != n) {
        free(text);
        text = NULL;
        goto out;
    }
    b64url(bin, (size_t)n, text);
out:
    free(bin);
    BN_free(bn);
    return text;
}

static double clock_s(clockid_t id)
{
    struct timespec ts;

    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- keys and tokens ------------------------------------------------------------------ */

static int make_key(struct bench_case *c)
{
    const struct spec *s = c->spec;

    if (random_b64url(20, c->kid) != 0) /* 27 characters, the shape of an Entra ID kid */
        return -1;
    switch (s->kind) {
    case KIND_RSA:
        c->pkey = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)RSA_BITS);
        break;
    case KIND_EC:
        c->pkey = EVP_PKEY_Q_keygen(NULL, NULL, "EC", s->group);
        break;
    case KIND_OKP:
        c->pkey = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
        break;
    case KIND_HMAC:
        if (RAND_bytes(c->secret, sizeof(c->secret)) != 1) {
            openssl_fail("RAND_bytes");
            return -1;
        }
        /* as auth/jwks.c loads a secret_env issuer: one key without a kid */
        if (aor_jwks_new_hmac(s->alg, c->secret, sizeof(c->secret), NULL, &c->hmac_keys) != 0) {
            fprintf(stderr, "jwt_bench: aor_jwks_new_hmac(%s) refused the secret\n", aor_jwk_alg_name(s->alg));
            return -1;
        }
        c->keys = c->hmac_keys;
        return 0;
    }
    if (c->pkey == NULL) {
        openssl_fail("EVP_PKEY_Q_keygen");
        return -1;
    }
    return 0;
}

/* the public JWK of an asymmetric key, as an IdP publishes it; NULL on failure */
static json_t *public_jwk(const struct bench_case *c)
{
    const struct spec *s = c->spec;
    json_t *jwk = json_pack("{s:s, s:s, s:s}", "use", "sig", "kid", c->kid, "alg", aor_jwk_alg_name(s->alg));
    char *a = NULL, *b = NULL;
    int ok = 0;

    if (jwk == NULL)
        return NULL;
    if (s->kind == KIND_RSA) {
        ok = (a = bn_param_b64url(c->pkey, OSSL_PKEY_PARAM_RSA_N, 0)) != NULL &&
             (b = bn_param_b64url(c->pkey, OSSL_PKEY_PARAM_RSA_E, 0)) != NULL &&
             json_object_set_new(jwk, "kty", json_string("RSA")) == 0 && json_object_set_new(jwk, "n", json_string(a)) == 0 &&
             json_object_set_new(jwk, "e", json_string(b)) == 0;
    } else if (s->kind == KIND_EC) {
        /* each coordinate exactly the field size (RFC 7518 §6.2.1.2), hence the padding */
        ok = (a = bn_param_b64url(c->pkey, OSSL_PKEY_PARAM_EC_PUB_X, s->coord_len)) != NULL &&
             (b = bn_param_b64url(c->pkey, OSSL_PKEY_PARAM_EC_PUB_Y, s->coord_len)) != NULL &&
             json_object_set_new(jwk, "kty", json_string("EC")) == 0 &&
             json_object_set_new(jwk, "crv", json_string(s->group)) == 0 && json_object_set_new(jwk, "x", json_string(a)) == 0 &&
             json_object_set_new(jwk, "y", json_string(b)) == 0;
    } else if (s->kind == KIND_OKP) {
        unsigned char raw[32];
        size_t raw_len = sizeof(raw);
        char x[48];
        ok = EVP_PKEY_get_raw_public_key(c->pkey, raw, &raw_len) == 1 && raw_len == sizeof(raw) && b64url(raw, raw_len, x) != 0 &&
             json_object_set_new(jwk, "kty", json_string("OKP")) == 0 &&
             json_object_set_new(jwk, "crv", json_string("Ed25519")) == 0 && json_object_set_new(jwk, "x", json_string(x)) == 0;
    }
    free(a);
    free(b);
    if (!ok) {
        openssl_fail("exporting a public key");
        json_decref(jwk);
        return NULL;
    }
    return jwk;
}

/* JWS signature of `in` in JOSE form (ECDSA: r||s) into sig; its length, or 0 on failure */
static size_t sign(const struct bench_case *c, const char *in, size_t len, unsigned char sig[SIG_MAX])
{
    const struct spec *s = c->spec;
    EVP_MD_CTX *mctx = NULL;
    EVP_PKEY_CTX *pctx = NULL;
    ECDSA_SIG *es = NULL;
    unsigned char der[SIG_MAX];
    size_t n = 0, der_len = sizeof(der);

    if (s->kind == KIND_HMAC) {
        if (EVP_Q_mac(NULL, "HMAC", NULL, s->md, NULL, c->secret, sizeof(c->secret), (const unsigned char *)in, len, sig, SIG_MAX,
                      &n) == NULL) {
            openssl_fail("EVP_Q_mac");
            return 0;
        }
        return n;
    }
    if ((mctx = EVP_MD_CTX_new()) == NULL || EVP_DigestSignInit_ex(mctx, &pctx, s->md, NULL, NULL, c->pkey, NULL) != 1)
        goto fail;
    /* RFC 7518 §3.5: MGF1 with the same hash, salt as long as the hash */
    if (s->pss && (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
                   EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) != 1 ||
                   EVP_PKEY_CTX_set_rsa_mgf1_md_name(pctx, s->md, NULL) != 1))
        goto fail;
    if (s->kind != KIND_EC) {
        n = SIG_MAX;
        if (EVP_DigestSign(mctx, sig, &n, (const unsigned char *)in, len) != 1)
            goto fail;
    } else {
        const unsigned char *p = der;
        const BIGNUM *r, *sv;
        /* EVP gives DER (RFC 3279); JOSE wants r and s, each the coordinate size (RFC 7518 §3.4) */
        if (EVP_DigestSign(mctx, der, &der_len, (const unsigned char *)in, len) != 1 ||
            (es = d2i_ECDSA_SIG(NULL, &p, (long)der_len)) == NULL)
            goto fail;
        ECDSA_SIG_get0(es, &r, &sv);
        if (BN_bn2binpad(r, sig, (int)s->coord_len) != (int)s->coord_len ||
            BN_bn2binpad(sv, sig + s->coord_len, (int)s->coord_len) != (int)s->coord_len)
            goto fail;
        n = 2 * s->coord_len;
    }
    ECDSA_SIG_free(es);
    EVP_MD_CTX_free(mctx);
    return n;
fail:
    openssl_fail("signing");
    ECDSA_SIG_free(es);
    EVP_MD_CTX_free(mctx);
    return 0;
}

/* the claims of an Entra ID v2 access token for a user calling an app through an API; NULL on failure */
static json_t *entra_claims(const struct identity *id, int64_t now_s)
{
    char aio[96], rh[64], sub[48], uti[32];

    /* opaque Entra values, random but of their usual lengths */
    if (random_b64url(66, aio) != 0 || random_b64url(42, rh) != 0 || random_b64url(32, sub) != 0 || random_b64url(16, uti) != 0)
        return NULL;
    return json_pack("{s:s, s:s, s:I, s:I, s:I, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:[s,s], s:s, s:s, s:s, s:s, s:s}", "aud",
                     id->aud, "iss", id->iss, "iat", (json_int_t)now_s, "nbf", (json_int_t)now_s, "exp", (json_int_t)(now_s + 3600),
                     "aio", aio, "azp", id->azp, "azpacr", "1", "name", "Ada Lovelace", "oid", id->oid, "preferred_username",
                     "ada.lovelace@contoso.onmicrosoft.com", "rh", rh, "roles", "Chat.Completions", "Embeddings.Create", "scp",
                     "access_as_user Chat.Read", "sub", sub, "tid", id->tid, "uti", uti, "ver", "2.0");
}

/* signs this case's token: header {alg, kid, typ}, the claims above; 0 or -1 */
static int make_token(struct bench_case *c, const struct identity *id)
{
    json_t *header = json_pack("{s:s, s:s, s:s}", "alg", aor_jwk_alg_name(c->spec->alg), "kid", c->kid, "typ", "JWT");
    json_t *claims = entra_claims(id, c->now_s);
    char *hj = NULL, *cj = NULL, *tok = NULL;
    unsigned char sig[SIG_MAX];
    size_t hl, cl, n, sig_len;
    int rc = -1;

    if (header == NULL || claims == NULL || (hj = json_dumps(header, JSON_COMPACT)) == NULL ||
        (cj = json_dumps(claims, JSON_COMPACT)) == NULL)
        goto out;
    hl = strlen(hj);
    cl = strlen(cj);
    if ((tok = malloc((hl + 2) / 3 * 4 + (cl + 2) / 3 * 4 + (SIG_MAX + 2) / 3 * 4 + 3)) == NULL)
        goto out;
    n = b64url((const unsigned char *)hj, hl, tok);
    tok[n++] = '.';
    n += b64url((const unsigned char *)cj, cl, tok + n);
    if ((sig_len = sign(c, tok, n, sig)) == 0)
        goto out;
    tok[n++] = '.';
    n += b64url(sig, sig_len, tok + n);
    c->token = tok;
    c->token_len = n;
    tok = NULL;
    rc = 0;
out:
    if (rc != 0)
        fprintf(stderr, "jwt_bench: %s: could not build the token\n", aor_jwk_alg_name(c->spec->alg));
    free(tok);
    free(hj);
    free(cj);
    json_decref(header);
    json_decref(claims);
    return rc;
}

/* ---- the two operations and the timing loop ------------------------------------------- */

static int op_cold(struct bench_case *c)
{
    struct aor_jwt_result res;
    int rc = aor_jwt_verify(c->token, c->token_len, c->keys, c->policy, c->now_s, &res);

    if (rc != 0 && c->failed_rc == 0)
        c->failed_rc = rc;
    return rc;
}

static int op_signature(struct bench_case *c)
{
    return aor_jwk_verify(c->sig_key, c->spec->alg, c->token, c->input_len, c->sig, c->sig_len) == 0 ? 0 : -1;
}

static int op_cached(struct bench_case *c)
{
    struct aor_tokencache_key key;
    struct aor_tokencache_value v;

    if (aor_tokencache_key(c->cache, c->token, c->token_len, &key) != 0 ||
        aor_tokencache_get(c->cache, &key, CACHE_GEN, c->now_ms, &v) != 1 || v.err != 0)
        return -1;
    return 0;
}

/*
 * Runs `op` for `seconds` of process CPU time, in batches that double until one lasts
 * CLOCK_EVERY_S, so that reading the clock (a system call for a CPU clock) stays under 0.1%
 * of the time even for sub-microsecond operations. Returns 0, or -1 at the first failed op.
 */
static int measure(struct bench_case *c, bench_op_cb op, double seconds, struct measure *m)
{
    double cpu0 = clock_s(CLOCK_PROCESS_CPUTIME_ID), wall0 = clock_s(CLOCK_MONOTONIC), last = cpu0, now;
    uint64_t batch = 1, i;

    m->ops = 0;
    for (;;) {
        for (i = 0; i != batch; ++i)
            if (op(c) != 0)
                return -1;
        m->ops += batch;
        now = clock_s(CLOCK_PROCESS_CPUTIME_ID);
        if (now - cpu0 >= seconds)
            break;
        if (now - last < CLOCK_EVERY_S)
            batch *= 2;
        last = now;
    }
    m->cpu_s = now - cpu0;
    m->wall_s = clock_s(CLOCK_MONOTONIC) - wall0;
    return 0;
}

/* ---- main ----------------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: jwt_bench [-d seconds] [-a ALG[,ALG...]]\n"
            "  -d  CPU seconds per measurement (two per algorithm), default %.1f\n"
            "  -a  only these algorithms (RS256 ... HS512), default all thirteen\n",
            DEFAULT_SECONDS);
}

/* 1 if `name` is in the comma-separated list (NULL: every name) */
static int selected(const char *list, const char *name)
{
    size_t n = strlen(name);
    const char *p = list;

    if (list == NULL)
        return 1;
    while ((p = strstr(p, name)) != NULL) {
        if ((p == list || p[-1] == ',') && (p[n] == ',' || p[n] == '\0'))
            return 1;
        p += n;
    }
    return 0;
}

static double per_s(const struct measure *m)
{
    return m->cpu_s > 0 ? (double)m->ops / m->cpu_s : 0;
}

static double us_per(const struct measure *m)
{
    return m->ops != 0 ? m->cpu_s * 1e6 / (double)m->ops : 0;
}

int main(int argc, char **argv)
{
    static const char *const tenant_claims[] = {"tid", "azp", "sub"}; /* the config's default */
    static const char *const roles[] = {"Chat.Completions"};
    struct bench_case cases[NUM_SPECS];
    struct identity id;
    const char *audiences[2];
    struct aor_jwt_claim_rule required = {"roles", roles, 1};
    struct aor_jwt_policy pol_asym, pol_hmac;
    struct aor_jwks *jwks = NULL;
    struct aor_jwks_stats st;
    struct aor_tokencache *cache = NULL;
    struct timespec rt;
    json_t *doc = NULL;
    char *doc_text = NULL, *end;
    const char *only = NULL;
    double seconds = DEFAULT_SECONDS, cpu_total = 0, wall_total = 0;
    size_t n = 0, i, n_asym = 0, fill;
    int opt, rc = 2, failures = 0;

    while ((opt = getopt(argc, argv, "d:a:h")) != -1) {
        switch (opt) {
        case 'd':
            errno = 0;
            seconds = strtod(optarg, &end);
            if (errno != 0 || *end != '\0' || !(seconds > 0 && seconds <= MAX_SECONDS)) {
                fprintf(stderr, "jwt_bench: -d wants seconds in (0, %.0f]\n", MAX_SECONDS);
                return 2;
            }
            break;
        case 'a':
            only = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }

    memset(cases, 0, sizeof(cases));
    clock_gettime(CLOCK_REALTIME, &rt);
    if (random_guid(id.tid) != 0 || random_guid(id.oid) != 0 || random_guid(id.azp) != 0 || random_guid(id.aud) != 0) {
        openssl_fail("RAND_bytes");
        goto out;
    }
    snprintf(id.iss, sizeof(id.iss), "https://login.microsoftonline.com/%s/v2.0", id.tid);
    audiences[0] = id.aud;
    audiences[1] = "api://aoai-router";

    /* an issuer as the config writes it: defaults for skew, lifetime and tenant claims, one required role */
    memset(&pol_asym, 0, sizeof(pol_asym));
    pol_asym.issuer = id.iss;
    pol_asym.audiences = audiences;
    pol_asym.n_audiences = 2;
    pol_asym.required = &required;
    pol_asym.n_required = 1;
    pol_asym.tenant_claims = tenant_claims;
    pol_asym.n_tenant_claims = 3;
    pol_asym.clock_skew_s = 60;
    pol_asym.max_lifetime_s = 86400;
    pol_asym.algs = 0; /* no `algorithms:` in the config: every asymmetric one */
    pol_hmac = pol_asym;
    pol_hmac.algs = AOR_JWK_ALGS_HMAC; /* what config.c fills in for a secret_env issuer */

    if ((cache = aor_tokencache_create(AOR_TOKENCACHE_DEFAULT_CAPACITY)) == NULL) {
        fprintf(stderr, "jwt_bench: aor_tokencache_create failed\n");
        goto out;
    }

    fprintf(stderr, "generating keys and signing tokens...\n");
    for (i = 0; i != NUM_SPECS; ++i) {
        struct bench_case *c = &cases[n];
        if (!selected(only, aor_jwk_alg_name(specs[i].alg)))
            continue;
        c->spec = &specs[i];
        c->policy = specs[i].kind == KIND_HMAC ? &pol_hmac : &pol_asym;
        c->cache = cache;
        c->now_s = (int64_t)rt.tv_sec;
        c->now_ms = (int64_t)rt.tv_sec * 1000 + rt.tv_nsec / 1000000;
        ++n;
        if (make_key(c) != 0 || make_token(c, &id) != 0)
            goto out;
        n_asym += specs[i].kind != KIND_HMAC;
    }
    if (n == 0) {
        fprintf(stderr, "jwt_bench: -a names no algorithm we verify\n");
        goto out;
    }

    /* one JWKS with every public key, as an IdP that publishes several keys at once */
    if (n_asym != 0) {
        if ((doc = json_pack("{s:[]}", "keys")) == NULL)
            goto nomem;
        for (i = 0; i != n; ++i) {
            json_t *jwk;
            if (cases[i].spec->kind == KIND_HMAC)
                continue;
            if ((jwk = public_jwk(&cases[i])) == NULL)
                goto out;
            if (json_array_append_new(json_object_get(doc, "keys"), jwk) != 0)
                goto nomem;
        }
        if ((doc_text = json_dumps(doc, JSON_COMPACT)) == NULL)
            goto nomem;
        if (aor_jwks_parse(doc_text, strlen(doc_text), 0, &jwks, &st) != 0 || st.usable != n_asym) {
            fprintf(stderr, "jwt_bench: aor_jwks_parse kept %u of %zu keys (invalid %u, unsupported %u)\n", st.usable, n_asym,
                    st.invalid, st.unsupported);
            goto out;
        }
        for (i = 0; i != n; ++i)
            if (cases[i].spec->kind != KIND_HMAC)
                cases[i].keys = jwks;
    }

    /* a worker's cache as it runs: full of other clients' tokens (random digests stand in for them) */
    for (fill = 0; fill + n != AOR_TOKENCACHE_DEFAULT_CAPACITY; ++fill) {
        struct aor_tokencache_key k;
        struct aor_tokencache_value v = {0, 0, cases[0].now_s + 3600, "other-tenant", "sub", "oid", "client"};
        if (RAND_bytes(k.digest, sizeof(k.digest)) != 1 || aor_tokencache_put(cache, &k, CACHE_GEN, &v, cases[0].now_ms) != 0) {
            fprintf(stderr, "jwt_bench: could not fill the token cache\n");
            goto out;
        }
    }

    /* each token verifies once, untimed, and its outcome goes into the cache as check_jwt puts it */
    for (i = 0; i != n; ++i) {
        struct bench_case *c = &cases[i];
        struct aor_jwt_result res;
        struct aor_tokencache_key k;
        struct aor_tokencache_value v;
        long sig_len;
        int vrc = aor_jwt_verify(c->token, c->token_len, c->keys, c->policy, c->now_s, &res);
        if (vrc != 0 || strcmp(res.tenant, id.tid) != 0) {
            fprintf(stderr, "jwt_bench: %s: the token does not verify: %s\n", aor_jwk_alg_name(c->spec->alg), aor_jwt_reason(vrc));
            rc = 1;
            goto out;
        }
        c->sig_key = c->spec->kind == KIND_HMAC ? aor_jwks_get(c->keys, 0) : aor_jwks_find_kid(c->keys, c->kid, strlen(c->kid));
        c->input_len = (size_t)((const char *)memrchr(c->token, '.', c->token_len) - c->token);
        sig_len = aor_jwk_b64url_decode(c->token + c->input_len + 1, c->token_len - c->input_len - 1, c->sig, sizeof(c->sig));
        if (c->sig_key == NULL || sig_len <= 0) {
            fprintf(stderr, "jwt_bench: %s: no key or signature for the signature-only run\n", aor_jwk_alg_name(c->spec->alg));
            goto out;
        }
        c->sig_len = (size_t)sig_len;
        memset(&v, 0, sizeof(v));
        v.err = 0;
        v.issuer = 0;
        v.exp = res.exp;
        v.tenant = res.tenant;
        v.sub = res.sub;
        v.oid = res.oid;
        v.client_id = res.client_id;
        if (aor_tokencache_key(cache, c->token, c->token_len, &k) != 0 ||
            aor_tokencache_put(cache, &k, CACHE_GEN, &v, c->now_ms) != 0) {
            fprintf(stderr, "jwt_bench: could not cache the %s outcome\n", aor_jwk_alg_name(c->spec->alg));
            goto out;
        }
    }

    for (i = 0; i != n; ++i) {
        struct bench_case *c = &cases[i];
        struct measure warm;
        const char *name = aor_jwk_alg_name(c->spec->alg);

        fprintf(stderr, "%-6s cold...", name);
        if (measure(c, op_cold, seconds / 10, &warm) != 0 || measure(c, op_cold, seconds, &c->cold) != 0) {
            fprintf(stderr, " FAILED: a verification returned %d (%s)\n", c->failed_rc, aor_jwt_reason(c->failed_rc));
            ++failures;
            continue;
        }
        fprintf(stderr, " signature...");
        if (measure(c, op_signature, seconds / 10, &warm) != 0 || measure(c, op_signature, seconds, &c->signature) != 0) {
            fprintf(stderr, " FAILED: aor_jwk_verify refused the signature\n");
            ++failures;
            continue;
        }
        fprintf(stderr, " cached...");
        if (measure(c, op_cached, seconds / 10, &warm) != 0 || measure(c, op_cached, seconds, &c->cached) != 0) {
            fprintf(stderr, " FAILED: a cache lookup missed\n");
            ++failures;
            continue;
        }
        fprintf(stderr, " done\n");
        cpu_total += c->cold.cpu_s + c->signature.cpu_s + c->cached.cpu_s;
        wall_total += c->cold.wall_s + c->signature.wall_s + c->cached.wall_s;
    }

    printf("# jwt_bench: %s, jansson %s, %.2f CPU s per measurement, one thread\n", OpenSSL_version(OPENSSL_VERSION),
           JANSSON_VERSION, seconds);
    printf("# JWKS: %zu public key(s) in one document; cache: %zu entries (full)\n", n_asym,
           (size_t)AOR_TOKENCACHE_DEFAULT_CAPACITY);
    printf("\n| alg | key | token bytes | cold verifications/s | cold µs | of which signature µs | cached lookups/s | cached µs | "
           "cold ÷ cached |\n");
    printf("|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (i = 0; i != n; ++i) {
        const struct bench_case *c = &cases[i];
        if (c->cold.ops == 0 || c->signature.ops == 0 || c->cached.ops == 0) {
            printf("| %s | %s | %zu | FAILED | | | | | |\n", aor_jwk_alg_name(c->spec->alg), c->spec->key_desc, c->token_len);
            continue;
        }
        printf("| %s | %s | %zu | %.0f | %.2f | %.2f | %.0f | %.2f | %.0f× |\n", aor_jwk_alg_name(c->spec->alg), c->spec->key_desc,
               c->token_len, per_s(&c->cold), us_per(&c->cold), us_per(&c->signature), per_s(&c->cached), us_per(&c->cached),
               us_per(&c->cold) / us_per(&c->cached));
    }
    if (wall_total > 0)
        printf("\nCPU time ÷ wall time over the timed runs: %.1f%% (below 100%%: the process waited for a CPU)\n",
               100.0 * cpu_total / wall_total);
    rc = failures != 0 ? 1 : 0;
    if (failures != 0)
        fprintf(stderr, "jwt_bench: %d algorithm(s) failed: the figures above are incomplete\n", failures);
    goto out;
nomem:
    fprintf(stderr, "jwt_bench: out of memory\n");
out:
    for (i = 0; i != NUM_SPECS; ++i) {
        EVP_PKEY_free(cases[i].pkey);
        aor_jwks_release(cases[i].hmac_keys);
        OPENSSL_cleanse(cases[i].secret, sizeof(cases[i].secret));
        free(cases[i].token);
    }
    aor_jwks_release(jwks);
    aor_tokencache_destroy(cache);
    free(doc_text);
    json_decref(doc);
    return rc;
}
