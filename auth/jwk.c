/*
 * jwk — JWK set parsing and JOSE signature verification with OpenSSL 3 EVP (see jwk.h).
 * Keys are built with EVP_PKEY_fromdata from the JWK parameters, never from PEM or a
 * certificate, and each key carries the mask of algorithms it may verify: the algorithm
 * is pinned by the key (kty, crv, alg), the token's header only selects within that mask.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/obj_mac.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>
#include "jwk.h"

enum kty { KTY_RSA, KTY_EC, KTY_OKP, KTY_OCT };
enum { HASH_NONE = -1, HASH_256, HASH_384, HASH_512, HASH_COUNT };

static const struct {
    const char *name;
    int hash;
    int pss;
} algs_tab[AOR_JWK_ALG_COUNT] = {
    [AOR_JWK_RS256] = {"RS256", HASH_256, 0},  [AOR_JWK_RS384] = {"RS384", HASH_384, 0}, [AOR_JWK_RS512] = {"RS512", HASH_512, 0},
    [AOR_JWK_PS256] = {"PS256", HASH_256, 1},  [AOR_JWK_PS384] = {"PS384", HASH_384, 1}, [AOR_JWK_PS512] = {"PS512", HASH_512, 1},
    [AOR_JWK_ES256] = {"ES256", HASH_256, 0},  [AOR_JWK_ES384] = {"ES384", HASH_384, 0}, [AOR_JWK_ES512] = {"ES512", HASH_512, 0},
    [AOR_JWK_EDDSA] = {"EdDSA", HASH_NONE, 0}, [AOR_JWK_HS256] = {"HS256", HASH_256, 0}, [AOR_JWK_HS384] = {"HS384", HASH_384, 0},
    [AOR_JWK_HS512] = {"HS512", HASH_512, 0},
};

static const char *const hash_names[HASH_COUNT] = {"SHA2-256", "SHA2-384", "SHA2-512"};
static const size_t hash_sizes[HASH_COUNT] = {32, 48, 64};

#define ALGS_RSA                                                                                                                   \
    (AOR_JWK_ALG_BIT(AOR_JWK_RS256) | AOR_JWK_ALG_BIT(AOR_JWK_RS384) | AOR_JWK_ALG_BIT(AOR_JWK_RS512) |                            \
     AOR_JWK_ALG_BIT(AOR_JWK_PS256) | AOR_JWK_ALG_BIT(AOR_JWK_PS384) | AOR_JWK_ALG_BIT(AOR_JWK_PS512))

static const struct curve {
    const char *crv;   /* JWK name */
    const char *group; /* OpenSSL group name */
    int nid;
    size_t coord_len;
    unsigned bits;
    enum aor_jwk_alg alg;
} curves[] = {
    {"P-256", "prime256v1", NID_X9_62_prime256v1, 32, 256, AOR_JWK_ES256},
    {"P-384", "secp384r1", NID_secp384r1, 48, 384, AOR_JWK_ES384},
    {"P-521", "secp521r1", NID_secp521r1, 66, 521, AOR_JWK_ES512},
};
#define MAX_COORD 66

/* one usable key; lives inside its set, immutable after the parse */
struct aor_jwk {
    const struct aor_jwks *set; /* for the digests fetched once per set */
    char *kid;                  /* NUL-terminated, NULL when absent */
    size_t kid_len;
    enum kty kty;
    const char *crv; /* static */
    uint32_t algs;
    unsigned bits;
    EVP_PKEY *pkey;        /* RSA, EC, OKP */
    unsigned char *secret; /* oct */
    size_t secret_len;
    size_t sig_len;                 /* exact signature size (RSA, EC, OKP) */
    size_t coord_len;               /* EC */
    unsigned char order[MAX_COORD]; /* EC group order, big-endian, coord_len bytes */
    int dropped;                    /* parse time only: duplicate kid */
};

/* reference-counted; freed by the last aor_jwks_release on whichever thread */
struct aor_jwks {
    atomic_uint refs;
    EVP_MD *md[HASH_COUNT];
    size_t n;
    struct aor_jwk keys[];
};

/* ---- small helpers ---------------------------------------------------------------- */

static int b64val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

long aor_jwk_b64url_decode(const char *in, size_t len, unsigned char *out, size_t cap)
{
    size_t rem = len % 4, full = len - rem, i, o = 0;
    size_t outlen = full / 4 * 3 + (rem ? rem - 1 : 0);

    if (rem == 1 || outlen > cap)
        return -1;
    for (i = 0; i != full; i += 4) {
        int a = b64val((unsigned char)in[i]), b = b64val((unsigned char)in[i + 1]);
        int c = b64val((unsigned char)in[i + 2]), d = b64val((unsigned char)in[i + 3]);
        uint32_t v;
        if ((a | b | c | d) < 0)
            return -1;
        v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | (uint32_t)d;
        out[o++] = (unsigned char)(v >> 16);
        out[o++] = (unsigned char)(v >> 8);
        out[o++] = (unsigned char)v;
    }
    if (rem >= 2) {
        int a = b64val((unsigned char)in[i]), b = b64val((unsigned char)in[i + 1]);
        int c = rem == 3 ? b64val((unsigned char)in[i + 2]) : 0;
        if ((a | b | c) < 0)
            return -1;
        /* canonical: the bits past the last whole byte must be zero, else two texts decode alike */
        if (rem == 2 ? (b & 0x0f) != 0 : (c & 0x03) != 0)
            return -1;
        out[o++] = (unsigned char)(a << 2 | b >> 4);
        if (rem == 3)
            out[o++] = (unsigned char)((b & 0x0f) << 4 | c >> 2);
    }
    return (long)o;
}

int aor_jwk_json_depth_ok(const char *s, size_t len, int max_depth)
{
    int depth = 0, in_str = 0;
    size_t i;

    for (i = 0; i < len; ++i) {
        char c = s[i];
        if (in_str) {
            if (c == '\\')
                ++i;
            else if (c == '"')
                in_str = 0;
            continue;
        }
        if (c == '"') {
            in_str = 1;
        } else if (c == '{' || c == '[') {
            if (++depth > max_depth)
                return 0;
        } else if (c == '}' || c == ']') {
            if (--depth < 0)
                return 0;
        }
    }
    return 1;
}

const char *aor_jwk_alg_name(enum aor_jwk_alg alg)
{
    return (unsigned)alg < AOR_JWK_ALG_COUNT ? algs_tab[alg].name : NULL;
}

int aor_jwk_alg_from_name(const char *name, size_t len)
{
    int i;
    if (name == NULL)
        return -1;
    for (i = 0; i != AOR_JWK_ALG_COUNT; ++i)
        if (strlen(algs_tab[i].name) == len && memcmp(algs_tab[i].name, name, len) == 0)
            return i;
    return -1;
}

/* 1 and the string if `name` is a string member, 0 if absent, -1 if of another type */
static int member_str(json_t *obj, const char *name, const char **s, size_t *len)
{
    json_t *v = json_object_get(obj, name);
    *s = NULL;
    *len = 0;
    if (v == NULL)
        return 0;
    if (!json_is_string(v))
        return -1;
    *s = json_string_value(v);
    *len = json_string_length(v);
    return 1;
}

/* decoded size of a base64url string member, -1 if absent, invalid or over cap */
static long member_b64(json_t *obj, const char *name, unsigned char *buf, size_t cap)
{
    const char *s;
    size_t len;
    if (member_str(obj, name, &s, &len) != 1)
        return -1;
    return aor_jwk_b64url_decode(s, len, buf, cap);
}

static int str_is(const char *s, size_t len, const char *lit)
{
    return strlen(lit) == len && memcmp(s, lit, len) == 0;
}

/*
 * ROCA (CVE-2017-15361): Infineon's generator made moduli n = k*M + (65537^a mod M) with M
 * a primorial, so n mod p lies in the subgroup generated by 65537 mod p for every small
 * prime p of M. Random moduli pass that test for all 38 odd primes up to 167 with
 * negligible probability, so a key that does is refused (its factors can be computed).
 * Also refuses a modulus with a prime factor up to 167, which no real key has.
 * Returns 1 to refuse, 0 for a clean modulus, -1 on a library error.
 */
static int rsa_weak_modulus(const BIGNUM *n)
{
    static const unsigned char primes[] = {3,   5,   7,   11,  13,  17,  19,  23,  29,  31,  37,  41,  43,
                                           47,  53,  59,  61,  67,  71,  73,  79,  83,  89,  97,  101, 103,
                                           107, 109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167};
    size_t i;
    int all_in_subgroup = 1;

    for (i = 0; i != sizeof(primes); ++i) {
        unsigned p = primes[i], g = 65537 % p, x = 1;
        BN_ULONG r = BN_mod_word(n, p);
        int found = 0;
        if (r == (BN_ULONG)-1)
            return -1;
        if (r == 0)
            return 1;
        do {
            if (x == r) {
                found = 1;
                break;
            }
            x = x * g % p;
        } while (x != 1);
        if (!found)
            all_in_subgroup = 0;
    }
    return all_in_subgroup;
}

/* ---- one JWK ---------------------------------------------------------------------- */

enum verdict { V_OK, V_UNSUPPORTED, V_NOT_SIG, V_PRIVATE, V_INVALID, V_NOMEM };

static enum verdict from_params(const char *type, OSSL_PARAM *params, EVP_PKEY **out)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    enum verdict v = V_INVALID;

    if (ctx == NULL)
        return V_NOMEM;
    if (EVP_PKEY_fromdata_init(ctx) == 1 && EVP_PKEY_fromdata(ctx, out, EVP_PKEY_PUBLIC_KEY, params) == 1)
        v = V_OK;
    EVP_PKEY_CTX_free(ctx);
    return v;
}

static enum verdict parse_rsa(json_t *o, struct aor_jwk *k)
{
    static const char *const private_members[] = {"d", "p", "q", "dp", "dq", "qi", "oth"};
    unsigned char nbuf[AOR_JWK_RSA_MAX_BITS / 8 + 1], ebuf[16];
    long nlen, elen;
    const unsigned char *e;
    uint64_t ev = 0;
    BIGNUM *n = NULL, *ebn = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    OSSL_PARAM *params = NULL;
    enum verdict v = V_INVALID;
    size_t i;
    int bits, weak;

    for (i = 0; i != sizeof(private_members) / sizeof(private_members[0]); ++i)
        if (json_object_get(o, private_members[i]) != NULL)
            return V_PRIVATE;
    /* a leading zero octet in n is tolerated (RFC 7518 §6.3.1.1 notes libraries emit it) */
    if ((nlen = member_b64(o, "n", nbuf, sizeof(nbuf))) <= 0 || (elen = member_b64(o, "e", ebuf, sizeof(ebuf))) <= 0)
        return V_INVALID;
    for (e = ebuf; elen > 0 && *e == 0; ++e, --elen)
        ;
    if (elen == 0 || elen > 8)
        return V_INVALID;
    for (i = 0; i != (size_t)elen; ++i)
        ev = ev << 8 | e[i];
    if (ev < 3 || (ev & 1) == 0)
        return V_INVALID;

    if ((n = BN_bin2bn(nbuf, (int)nlen, NULL)) == NULL || (ebn = BN_bin2bn(e, (int)elen, NULL)) == NULL) {
        v = V_NOMEM;
        goto out;
    }
    bits = BN_num_bits(n);
    if (bits < AOR_JWK_RSA_MIN_BITS || bits > AOR_JWK_RSA_MAX_BITS || !BN_is_odd(n))
        goto out;
    if ((weak = rsa_weak_modulus(n)) != 0) {
        v = weak < 0 ? V_NOMEM : V_INVALID;
        goto out;
    }
    if ((bld = OSSL_PARAM_BLD_new()) == NULL || !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, ebn) || (params = OSSL_PARAM_BLD_to_param(bld)) == NULL) {
        v = V_NOMEM;
        goto out;
    }
    if ((v = from_params("RSA", params, &k->pkey)) != V_OK)
        goto out;
    k->kty = KTY_RSA;
    k->bits = (unsigned)bits;
    k->sig_len = (size_t)BN_num_bytes(n);
    k->algs = ALGS_RSA;
out:
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(n);
    BN_free(ebn);
    return v;
}

static enum verdict parse_ec(json_t *o, struct aor_jwk *k)
{
    const struct curve *cv = NULL;
    const char *crv;
    size_t crv_len, i;
    unsigned char pub[1 + 2 * MAX_COORD];
    OSSL_PARAM params[3];
    EVP_PKEY_CTX *check = NULL;
    EC_GROUP *group = NULL;
    enum verdict v;

    if (json_object_get(o, "d") != NULL)
        return V_PRIVATE;
    if (member_str(o, "crv", &crv, &crv_len) != 1)
        return V_INVALID;
    for (i = 0; i != sizeof(curves) / sizeof(curves[0]); ++i)
        if (str_is(crv, crv_len, curves[i].crv))
            cv = &curves[i];
    if (cv == NULL)
        return V_UNSUPPORTED; /* secp256k1, brainpool, ... */
    /* RFC 7518 §6.2.1.2: each coordinate is exactly the field size, no shorter, no longer */
    pub[0] = 0x04;
    if (member_b64(o, "x", pub + 1, cv->coord_len) != (long)cv->coord_len ||
        member_b64(o, "y", pub + 1 + cv->coord_len, cv->coord_len) != (long)cv->coord_len)
        return V_INVALID;
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)cv->group, 0);
    params[1] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, pub, 1 + 2 * cv->coord_len);
    params[2] = OSSL_PARAM_construct_end();
    if ((v = from_params("EC", params, &k->pkey)) != V_OK)
        return v;
    /* the point is on the curve and not the identity (fromdata decodes it; this says so explicitly) */
    if ((check = EVP_PKEY_CTX_new_from_pkey(NULL, k->pkey, NULL)) == NULL)
        return V_NOMEM;
    v = EVP_PKEY_public_check(check) == 1 ? V_OK : V_INVALID;
    EVP_PKEY_CTX_free(check);
    if (v != V_OK)
        return v;
    if ((group = EC_GROUP_new_by_curve_name(cv->nid)) == NULL)
        return V_NOMEM;
    if (BN_bn2binpad(EC_GROUP_get0_order(group), k->order, (int)cv->coord_len) != (int)cv->coord_len)
        v = V_NOMEM;
    EC_GROUP_free(group);
    k->kty = KTY_EC;
    k->crv = cv->crv;
    k->bits = cv->bits;
    k->coord_len = cv->coord_len;
    k->sig_len = 2 * cv->coord_len;
    k->algs = AOR_JWK_ALG_BIT(cv->alg);
    return v;
}

static enum verdict parse_okp(json_t *o, struct aor_jwk *k)
{
    const char *crv;
    size_t crv_len;
    unsigned char x[32];

    if (json_object_get(o, "d") != NULL)
        return V_PRIVATE;
    if (member_str(o, "crv", &crv, &crv_len) != 1)
        return V_INVALID;
    if (!str_is(crv, crv_len, "Ed25519"))
        return V_UNSUPPORTED; /* Ed448; X25519/X448 are not signature keys */
    if (member_b64(o, "x", x, sizeof(x)) != (long)sizeof(x))
        return V_INVALID;
    if ((k->pkey = EVP_PKEY_new_raw_public_key_ex(NULL, "ED25519", NULL, x, sizeof(x))) == NULL)
        return V_INVALID;
    k->kty = KTY_OKP;
    k->crv = "Ed25519";
    k->bits = 256;
    k->sig_len = 64;
    k->algs = AOR_JWK_ALG_BIT(AOR_JWK_EDDSA);
    return V_OK;
}

/* HS algorithms whose hash is no longer than the secret (RFC 7518 §3.2) */
static uint32_t hmac_algs_for(size_t len)
{
    uint32_t m = 0;
    if (len >= hash_sizes[HASH_256])
        m |= AOR_JWK_ALG_BIT(AOR_JWK_HS256);
    if (len >= hash_sizes[HASH_384])
        m |= AOR_JWK_ALG_BIT(AOR_JWK_HS384);
    if (len >= hash_sizes[HASH_512])
        m |= AOR_JWK_ALG_BIT(AOR_JWK_HS512);
    return m;
}

static enum verdict set_secret(struct aor_jwk *k, const void *secret, size_t len)
{
    if ((k->secret = malloc(len)) == NULL)
        return V_NOMEM;
    memcpy(k->secret, secret, len);
    k->secret_len = len;
    k->kty = KTY_OCT;
    k->bits = (unsigned)(len * 8);
    k->algs = hmac_algs_for(len);
    return V_OK;
}

static enum verdict parse_oct(json_t *o, struct aor_jwk *k)
{
    unsigned char buf[AOR_JWK_HMAC_MAX_SECRET];
    long len = member_b64(o, "k", buf, sizeof(buf));
    enum verdict v;

    if (len <= 0 || hmac_algs_for((size_t)len) == 0)
        v = V_INVALID;
    else
        v = set_secret(k, buf, (size_t)len);
    OPENSSL_cleanse(buf, sizeof(buf));
    return v;
}

static enum verdict parse_key(json_t *o, unsigned flags, struct aor_jwk *k)
{
    const char *kty, *use, *alg_s, *kid = NULL;
    size_t kty_len, use_len, alg_len, kid_len = 0;
    json_t *ops;
    int alg = -1, r, has_kid;
    enum verdict v;

    if (!json_is_object(o) || member_str(o, "kty", &kty, &kty_len) != 1)
        return V_INVALID;
    if ((r = member_str(o, "use", &use, &use_len)) < 0)
        return V_INVALID;
    if (r == 1 && !str_is(use, use_len, "sig"))
        return V_NOT_SIG;
    if ((ops = json_object_get(o, "key_ops")) != NULL) {
        size_t i;
        json_t *op;
        int verify = 0;
        if (!json_is_array(ops))
            return V_INVALID;
        json_array_foreach(ops, i, op)
        {
            if (!json_is_string(op))
                return V_INVALID;
            if (strcmp(json_string_value(op), "verify") == 0)
                verify = 1;
        }
        if (!verify)
            return V_NOT_SIG;
    }
    if ((r = member_str(o, "alg", &alg_s, &alg_len)) < 0)
        return V_INVALID;
    /* an alg we do not know (RSA-OAEP, A256GCM, a typo like ES521) pins the key to nothing we verify */
    if (r == 1 && (alg = aor_jwk_alg_from_name(alg_s, alg_len)) < 0)
        return V_UNSUPPORTED;
    if ((has_kid = member_str(o, "kid", &kid, &kid_len)) < 0 || (has_kid && (kid_len == 0 || kid_len > AOR_JWK_MAX_KID)))
        return V_INVALID;

    if (str_is(kty, kty_len, "RSA"))
        v = parse_rsa(o, k);
    else if (str_is(kty, kty_len, "EC"))
        v = parse_ec(o, k);
    else if (str_is(kty, kty_len, "OKP"))
        v = parse_okp(o, k);
    else if (str_is(kty, kty_len, "oct") && (flags & AOR_JWKS_ACCEPT_OCT))
        v = parse_oct(o, k);
    else
        v = V_UNSUPPORTED;
    if (v != V_OK)
        return v;
    if (alg >= 0) {
        /* the JWK's alg must fit its type (no "HS256" on an RSA key, no "ES384" on P-256) */
        if (!(k->algs & AOR_JWK_ALG_BIT(alg)))
            return V_INVALID;
        k->algs = AOR_JWK_ALG_BIT(alg);
    }
    if (has_kid) {
        if ((k->kid = malloc(kid_len + 1)) == NULL)
            return V_NOMEM;
        memcpy(k->kid, kid, kid_len);
        k->kid[kid_len] = '\0';
        k->kid_len = kid_len;
    }
    return V_OK;
}

static void key_clear(struct aor_jwk *k)
{
    EVP_PKEY_free(k->pkey);
    free(k->kid);
    if (k->secret != NULL) {
        OPENSSL_cleanse(k->secret, k->secret_len);
        free(k->secret);
    }
    memset(k, 0, sizeof(*k));
}

/* ---- the set ---------------------------------------------------------------------- */

static struct aor_jwks *set_alloc(size_t n)
{
    struct aor_jwks *set = calloc(1, sizeof(*set) + n * sizeof(set->keys[0]));
    int h;

    if (set == NULL)
        return NULL;
    atomic_init(&set->refs, 1);
    for (h = 0; h != HASH_COUNT; ++h) {
        if ((set->md[h] = EVP_MD_fetch(NULL, hash_names[h], NULL)) == NULL) {
            aor_jwks_release(set);
            return NULL;
        }
    }
    return set;
}

int aor_jwks_parse(const char *json, size_t len, unsigned flags, struct aor_jwks **out, struct aor_jwks_stats *stats)
{
    struct aor_jwks_stats st = {0};
    struct aor_jwks *set = NULL;
    json_t *root = NULL, *keys, *entry, *sig_entries[AOR_JWKS_MAX_KEYS];
    size_t i, j, n, kept, n_sig = 0;
    int rc, has_oct = 0, has_asym = 0;

    if (out == NULL || (json == NULL && len != 0)) {
        rc = AOR_JWKS_E_ARG;
        goto out;
    }
    *out = NULL;
    if (len > AOR_JWKS_MAX_DOC) {
        rc = AOR_JWKS_E_TOO_LARGE;
        goto out;
    }
    if (!aor_jwk_json_depth_ok(json, len, AOR_JWKS_MAX_DEPTH) ||
        (root = json_loadb(json, len, JSON_REJECT_DUPLICATES, NULL)) == NULL || !json_is_object(root) ||
        !json_is_array(keys = json_object_get(root, "keys"))) {
        rc = AOR_JWKS_E_MALFORMED;
        goto out;
    }
    st.entries = (unsigned)(n = json_array_size(keys));
    if (n > AOR_JWKS_MAX_KEYS) {
        rc = AOR_JWKS_E_TOO_LARGE;
        goto out;
    }
    if ((set = set_alloc(n)) == NULL) {
        rc = AOR_JWKS_E_NOMEM;
        goto out;
    }
    json_array_foreach(keys, i, entry)
    {
        struct aor_jwk *k = &set->keys[set->n];
        enum verdict v = parse_key(entry, flags, k);
        if (v != V_NOT_SIG)
            sig_entries[n_sig++] = entry;
        switch (v) {
        case V_OK:
            k->set = set;
            ++set->n;
            continue;
        case V_UNSUPPORTED:
            ++st.unsupported;
            break;
        case V_NOT_SIG:
            ++st.not_for_signing;
            break;
        case V_PRIVATE:
            ++st.private_parts;
            break;
        case V_INVALID:
            ++st.invalid;
            break;
        case V_NOMEM:
            key_clear(k);
            rc = AOR_JWKS_E_NOMEM;
            goto out;
        }
        key_clear(k);
    }
    /*
     * A kid names one key. Two signing entries under one kid are ambiguous, even when we
     * can use only one of them (the token may be meant for the other), so that kid is not
     * trusted at all. Entries for encryption do not count: sharing a kid with one is fine.
     */
    for (i = 0; i != set->n; ++i) {
        size_t same = 0;
        if (set->keys[i].kid == NULL)
            continue;
        for (j = 0; j != n_sig; ++j) {
            json_t *kid = json_object_get(sig_entries[j], "kid");
            if (json_is_string(kid) && json_string_length(kid) == set->keys[i].kid_len &&
                memcmp(json_string_value(kid), set->keys[i].kid, set->keys[i].kid_len) == 0)
                ++same;
        }
        set->keys[i].dropped = same > 1;
    }
    for (i = kept = 0; i != set->n; ++i) {
        if (set->keys[i].dropped) {
            ++st.duplicate_kid;
            key_clear(&set->keys[i]);
            continue;
        }
        if (set->keys[i].kty == KTY_OCT)
            has_oct = 1;
        else
            has_asym = 1;
        if (kept != i) {
            set->keys[kept] = set->keys[i];
            memset(&set->keys[i], 0, sizeof(set->keys[i]));
        }
        ++kept;
    }
    set->n = kept;
    st.usable = (unsigned)kept;
    if (has_oct && has_asym) {
        rc = AOR_JWKS_E_MIXED;
        goto out;
    }
    if (kept == 0) {
        rc = AOR_JWKS_E_NO_KEY;
        goto out;
    }
    *out = set;
    set = NULL;
    rc = 0;
out:
    if (rc != 0)
        st.usable = 0;
    if (stats != NULL)
        *stats = st;
    aor_jwks_release(set);
    json_decref(root);
    return rc;
}

int aor_jwks_new_hmac(enum aor_jwk_alg alg, const void *secret, size_t len, const char *kid, struct aor_jwks **out)
{
    struct aor_jwks *set;
    struct aor_jwk *k;
    size_t kid_len = kid != NULL ? strlen(kid) : 0;

    if (out == NULL)
        return AOR_JWKS_E_ARG;
    *out = NULL;
    if ((unsigned)alg >= AOR_JWK_ALG_COUNT || !(AOR_JWK_ALGS_HMAC & AOR_JWK_ALG_BIT(alg)) || secret == NULL ||
        len < hash_sizes[algs_tab[alg].hash] || len > AOR_JWK_HMAC_MAX_SECRET ||
        (kid != NULL && (kid_len == 0 || kid_len > AOR_JWK_MAX_KID)))
        return AOR_JWKS_E_ARG;
    if ((set = set_alloc(1)) == NULL)
        return AOR_JWKS_E_NOMEM;
    k = &set->keys[0];
    if (set_secret(k, secret, len) != V_OK || (kid != NULL && (k->kid = strdup(kid)) == NULL)) {
        key_clear(k);
        aor_jwks_release(set);
        return AOR_JWKS_E_NOMEM;
    }
    k->kid_len = kid_len;
    k->algs = AOR_JWK_ALG_BIT(alg); /* pinned: a 64-byte HS256 secret does not also verify HS512 */
    k->set = set;
    set->n = 1;
    *out = set;
    return 0;
}

struct aor_jwks *aor_jwks_retain(struct aor_jwks *set)
{
    atomic_fetch_add_explicit(&set->refs, 1, memory_order_relaxed);
    return set;
}

void aor_jwks_release(struct aor_jwks *set)
{
    size_t i;
    int h;

    if (set == NULL || atomic_fetch_sub_explicit(&set->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (i = 0; i != set->n; ++i)
        key_clear(&set->keys[i]);
    for (h = 0; h != HASH_COUNT; ++h)
        EVP_MD_free(set->md[h]);
    free(set);
}

size_t aor_jwks_count(const struct aor_jwks *set)
{
    return set->n;
}

const struct aor_jwk *aor_jwks_get(const struct aor_jwks *set, size_t i)
{
    return i < set->n ? &set->keys[i] : NULL;
}

const struct aor_jwk *aor_jwks_find_kid(const struct aor_jwks *set, const char *kid, size_t kid_len)
{
    size_t i;
    for (i = 0; i != set->n; ++i)
        if (set->keys[i].kid != NULL && set->keys[i].kid_len == kid_len && memcmp(set->keys[i].kid, kid, kid_len) == 0)
            return &set->keys[i];
    return NULL;
}

void aor_jwk_info(const struct aor_jwk *key, struct aor_jwk_info *info)
{
    static const char *const kty_names[] = {"RSA", "EC", "OKP", "oct"};
    info->kid = key->kid;
    info->kty = kty_names[key->kty];
    info->crv = key->crv;
    info->algs = key->algs;
    info->bits = key->bits;
}

uint32_t aor_jwk_algs(const struct aor_jwk *key)
{
    return key->algs;
}

const char *aor_jwk_kid(const struct aor_jwk *key)
{
    return key->kid;
}

/* ---- verification ----------------------------------------------------------------- */

/* 0 < v < order, both big-endian of the same length */
static int scalar_in_range(const unsigned char *v, const unsigned char *order, size_t len)
{
    size_t i;
    unsigned char any = 0;
    for (i = 0; i != len; ++i)
        any |= v[i];
    return any != 0 && memcmp(v, order, len) < 0;
}

static int digest_verify(const struct aor_jwk *key, const EVP_MD *md, int pss, const unsigned char *sig, size_t sig_len,
                         const void *data, size_t len)
{
    EVP_MD_CTX *mctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    int rc = AOR_JWK_E_INTERNAL;

    if (mctx == NULL)
        goto out;
    if (EVP_DigestVerifyInit(mctx, &pctx, md, NULL, key->pkey) != 1)
        goto out;
    if (pss && (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
                EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) != 1 || EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, md) != 1))
        goto out;
    rc = EVP_DigestVerify(mctx, sig, sig_len, data, len) == 1 ? 0 : AOR_JWK_E_SIGNATURE;
out:
    EVP_MD_CTX_free(mctx);
    /* a refused signature leaves errors on this thread's queue; do not let them pile up */
    ERR_clear_error();
    return rc;
}

static int ecdsa_verify(const struct aor_jwk *key, const EVP_MD *md, const unsigned char *sig, const void *data, size_t len)
{
    size_t l = key->coord_len;
    ECDSA_SIG *es = NULL;
    BIGNUM *r = NULL, *s = NULL;
    unsigned char der[3 * MAX_COORD], *p = der;
    int der_len, rc = AOR_JWK_E_INTERNAL;

    /* 0 < r, s < n, checked here rather than trusted to the library (CVE-2022-21449) */
    if (!scalar_in_range(sig, key->order, l) || !scalar_in_range(sig + l, key->order, l))
        return AOR_JWK_E_SIGNATURE;
    if ((es = ECDSA_SIG_new()) == NULL || (r = BN_bin2bn(sig, (int)l, NULL)) == NULL ||
        (s = BN_bin2bn(sig + l, (int)l, NULL)) == NULL || ECDSA_SIG_set0(es, r, s) != 1)
        goto out;
    r = s = NULL; /* owned by es */
    if ((der_len = i2d_ECDSA_SIG(es, NULL)) <= 0 || (size_t)der_len > sizeof(der) || i2d_ECDSA_SIG(es, &p) != der_len)
        goto out;
    rc = digest_verify(key, md, 0, der, (size_t)der_len, data, len);
out:
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(es);
    ERR_clear_error();
    return rc;
}

static int hmac_verify(const struct aor_jwk *key, const EVP_MD *md, const unsigned char *sig, size_t sig_len, const void *data,
                       size_t len)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    int rc;

    if (HMAC(md, key->secret, (int)key->secret_len, data, len, mac, &mac_len) == NULL) {
        ERR_clear_error();
        return AOR_JWK_E_INTERNAL;
    }
    rc = sig_len == mac_len && CRYPTO_memcmp(mac, sig, mac_len) == 0 ? 0 : AOR_JWK_E_SIGNATURE;
    OPENSSL_cleanse(mac, sizeof(mac));
    return rc;
}

int aor_jwk_verify(const struct aor_jwk *key, enum aor_jwk_alg alg, const void *data, size_t len, const unsigned char *sig,
                   size_t sig_len)
{
    const EVP_MD *md;

    if ((unsigned)alg >= AOR_JWK_ALG_COUNT || !(key->algs & AOR_JWK_ALG_BIT(alg)))
        return AOR_JWK_E_ALG;
    md = algs_tab[alg].hash == HASH_NONE ? NULL : key->set->md[algs_tab[alg].hash];
    if (key->kty == KTY_OCT)
        return hmac_verify(key, md, sig, sig_len, data, len);
    if (sig_len != key->sig_len)
        return AOR_JWK_E_SIGNATURE;
    if (key->kty == KTY_EC)
        return ecdsa_verify(key, md, sig, data, len);
    return digest_verify(key, md, algs_tab[alg].pss, sig, sig_len, data, len);
}
