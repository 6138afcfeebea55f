/*
 * auth.c — see auth.h.
 *
 * Modes (auth.mode):
 *   (no auth:)   every request is tenant "default" — or, on a TLS listener, the client
 *                certificate's identity when one was presented
 *   jwt          a valid Bearer token is required
 *   key          a valid subscription key is required
 *   jwt_or_key   a Bearer token if present, else a subscription key
 *   jwt_and_key  both; the token's tenant and the key's tenant must agree (else 403)
 * A client certificate names the tenant ("cert:<CN>") only when no JWT or key does.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include "apikey.h"
#include "auth.h"
#include "config.h"
#include "jwk.h"
#include "jwks.h"
#include "jwt.h"
#include "mtls.h"
#include "request.h"
#include "routes.h"
#include "server.h"
#include "tokencache.h"

#define MAX_REQUIRED_CLAIMS 32

static void refuse(struct aor_auth *a, int status, const char *reason, const char *description, int challenge)
{
    a->status = status;
    a->reason = reason;
    a->description = description;
    a->bearer_challenge = challenge;
}

static void copy_id(char *dst, const char *src)
{
    snprintf(dst, AOR_AUTH_ID_MAX, "%s", src != NULL ? src : "");
}

/* tenant names go into Redis keys, metrics labels and log lines: keep them to a safe alphabet */
static int tenant_ok(const char *s)
{
    size_t n = strlen(s), i;
    if (n == 0 || n > AOR_AUTH_ID_MAX)
        return 0;
    for (i = 0; i != n; ++i) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c >= 0x7f || c == '{' || c == '}' || c == '"' || c == '\\')
            return 0;
    }
    return 1;
}

/* ---- credentials on the request --------------------------------------------------- */

static int find_bearer(h2o_req_t *req, const char **token, size_t *len)
{
    ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_AUTHORIZATION, -1);
    h2o_iovec_t v;

    if (i < 0)
        return 0;
    v = req->headers.entries[i].value;
    if (v.len < 7 || strncasecmp(v.base, "Bearer ", 7) != 0)
        return 0;
    *token = v.base + 7;
    *len = v.len - 7;
    while (*len != 0 && **token == ' ')
        ++*token, --*len;
    return *len != 0;
}

static int find_key(const struct aor_request *ar, h2o_req_t *req, const char **key, size_t *len)
{
    const struct aor_config *conf = ar->conf;
    static const char *const defaults[] = {"api-key", "Ocp-Apim-Subscription-Key"};
    size_t n = conf->auth.num_key_headers != 0 ? conf->auth.num_key_headers : 2, k;

    for (k = 0; k != n; ++k) {
        const char *name = conf->auth.num_key_headers != 0 ? conf->auth.key_headers[k] : defaults[k];
        char lower[128];
        size_t nlen = strlen(name), j;
        ssize_t i;
        if (nlen >= sizeof(lower))
            continue;
        for (j = 0; j != nlen; ++j)
            lower[j] = (char)((name[j] >= 'A' && name[j] <= 'Z') ? name[j] + 32 : name[j]);
        if ((i = h2o_find_header_by_str(&req->headers, lower, nlen, -1)) >= 0) {
            *key = req->headers.entries[i].value.base;
            *len = req->headers.entries[i].value.len;
            return 1;
        }
    }
    return aor_route_query_param(ar->route.query, ar->route.query_len, "subscription-key", key, len);
}

/* ---- JWT ---------------------------------------------------------------------------- */

static uint32_t alg_mask(const struct aor_jwt_issuer_conf *ic)
{
    uint32_t mask = 0;
    size_t i;

    for (i = 0; i != ic->num_algorithms; ++i) {
        int alg = aor_jwk_alg_from_name(ic->algorithms[i], strlen(ic->algorithms[i]));
        if (alg >= 0)
            mask |= AOR_JWK_ALG_BIT(alg);
    }
    return mask; /* 0 = every asymmetric algorithm */
}

/* verifies `token` for issuer `idx`: the aor_jwt_verify code (0 = valid), or 0 with
 * res->http_status set when the issuer's keys are not loaded yet */
static int verify_with_issuer(struct aor_request *ar, int idx, const char *token, size_t len, struct aor_jwt_result *res)
{
    const struct aor_jwt_issuer_conf *ic = &ar->conf->auth.jwt[idx];
    struct aor_keystore *ks = ar->conf->keystores != NULL ? ar->conf->keystores[idx] : NULL;
    struct aor_jwt_claim_rule rules[MAX_REQUIRED_CLAIMS];
    struct aor_jwt_policy pol;
    struct aor_jwks *keys;
    size_t i;
    int rc;

    memset(res, 0, sizeof(*res));
    if (ks == NULL || (keys = aor_keystore_current(ks)) == NULL) {
        res->http_status = 401;
        res->reason = "keys_unavailable";
        res->error_description = "the issuer's signing keys are not available yet";
        return 0;
    }
    for (i = 0; i != ic->num_required_claims && i != MAX_REQUIRED_CLAIMS; ++i) {
        rules[i].name = ic->required_claims[i].claim;
        rules[i].values = (const char *const *)ic->required_claims[i].values;
        rules[i].n_values = ic->required_claims[i].num_values;
    }
    memset(&pol, 0, sizeof(pol));
    pol.issuer = ic->issuer;
    pol.audiences = (const char *const *)ic->audiences;
    pol.n_audiences = ic->num_audiences;
    pol.required = rules;
    pol.n_required = i;
    pol.tenant_claims = (const char *const *)ic->tenant_claims;
    pol.n_tenant_claims = ic->num_tenant_claims;
    pol.clock_skew_s = ic->clock_skew_s;
    pol.max_lifetime_s = (int64_t)ic->max_token_lifetime_s;
    pol.algs = alg_mask(ic);
    rc = aor_jwt_verify(token, len, keys, &pol, aor_now_ms() / 1000, res);
    aor_jwks_release(keys);
    if (res->unknown_kid)
        aor_keystore_request_refetch(ks); /* rotation? single flight and a cooldown live in the keystore */
    return rc;
}

/* the JWT part of the stage: 0 and the identity in `a`, or -1 with the refusal in `a` */
static int check_jwt(struct aor_request *ar, const char *token, size_t len)
{
    struct aor_auth *a = &ar->auth;
    const struct aor_config *conf = ar->conf;
    struct aor_tokencache *cache = ar->worker->tokens;
    struct aor_tokencache_key key;
    struct aor_tokencache_value v;
    uint64_t gen = conf->generation; /* a reload may change the policy: older entries miss */
    int64_t now = aor_now_ms();
    int cached = 0, have_key = 0;

    if (conf->auth.num_jwt == 0) {
        refuse(a, 401, "malformed", "no token issuer is configured", 1);
        return -1;
    }
    if (cache != NULL && aor_tokencache_key(cache, token, len, &key) == 0) {
        have_key = 1;
        cached = aor_tokencache_get(cache, &key, gen, now, &v);
    }
    if (!cached) {
        struct aor_jwt_result res;
        int idx = 0;
        int rc = 0;
        if (conf->auth.num_jwt > 1) {
            char iss[1024];
            int n = aor_jwt_peek_issuer(token, len, iss, sizeof(iss));
            /* an unreadable token is verified against the first issuer so that it is refused
             * for what is wrong with it (malformed, too_large), not as a wrong issuer */
            idx = n >= 0 ? aor_jwt_issuer_index(conf, iss, (size_t)n) : 0;
        }
        memset(&res, 0, sizeof(res));
        if (idx < 0) {
            rc = AOR_JWT_E_ISSUER;
            res.http_status = aor_jwt_http_status(rc);
            res.reason = aor_jwt_reason(rc);
            res.error_description = aor_jwt_description(rc);
        } else {
            rc = verify_with_issuer(ar, idx, token, len, &res);
        }
        memset(&v, 0, sizeof(v));
        if (res.http_status != 0) {
            /* refusals are cached briefly too (a flood of one bad token costs one check), except
             * "keys not loaded yet", which may change any moment */
            if (have_key && rc != 0) {
                v.err = rc;
                v.issuer = idx;
                aor_tokencache_put(cache, &key, gen, &v, now);
            }
            refuse(a, res.http_status, res.reason, res.error_description, 1);
            return -1;
        }
        v.err = 0;
        v.issuer = idx;
        v.exp = res.exp;
        v.tenant = res.tenant;
        v.sub = res.sub;
        v.oid = res.oid;
        v.client_id = res.client_id;
        if (have_key)
            aor_tokencache_put(cache, &key, gen, &v, now);
        copy_id(a->subject, res.sub[0] != '\0' ? res.sub : res.oid);
        copy_id(a->client_id, res.client_id);
        snprintf(a->tenant, sizeof(a->tenant), "%s", res.tenant);
    } else {
        if (v.err != 0) {
            refuse(a, aor_jwt_http_status(v.err), aor_jwt_reason(v.err), aor_jwt_description(v.err), 1);
            return -1;
        }
        copy_id(a->subject, v.sub[0] != '\0' ? v.sub : v.oid);
        copy_id(a->client_id, v.client_id);
        snprintf(a->tenant, sizeof(a->tenant), "%s", v.tenant);
    }
    if (!tenant_ok(a->tenant)) {
        refuse(a, 403, "missing_claim", "the token names no usable tenant", 0);
        return -1;
    }
    return 0;
}

/* ---- subscription keys --------------------------------------------------------------- */

/* applies a key answer; for jwt_and_key, `a->tenant` already holds the token's tenant */
static void apply_key_result(struct aor_request *ar, const struct aor_apikey_result *r, int and_jwt)
{
    struct aor_auth *a = &ar->auth;

    snprintf(a->key_id, sizeof(a->key_id), "%s", r->digest_prefix);
    switch (r->status) {
    case AOR_APIKEY_OK:
        break;
    case AOR_APIKEY_UNKNOWN:
        refuse(a, 401, "unknown_key", "the subscription key is not valid", 0);
        return;
    case AOR_APIKEY_REVOKED:
        refuse(a, 403, "revoked_key", "the subscription key has been revoked", 0);
        return;
    case AOR_APIKEY_TENANT_DISABLED:
        refuse(a, 403, "tenant_disabled", "the tenant is disabled", 0);
        return;
    case AOR_APIKEY_UNAVAILABLE:
        /* Redis is down: a key seen recently keeps its tenant when the operator chose on_failure: open */
        if (!ar->conf->redis.fail_closed && r->tenant[0] != '\0')
            break;
        refuse(a, 503, "store_unavailable", "the key store is unavailable", 0);
        return;
    }
    if (and_jwt && strcmp(a->tenant, r->tenant) != 0) {
        refuse(a, 403, "tenant_mismatch", "the token and the subscription key name different tenants", 0);
        return;
    }
    snprintf(a->tenant, sizeof(a->tenant), "%s", r->tenant);
    a->method = and_jwt ? "jwt+key" : "key";
}

static void on_key_result(void *data, const struct aor_apikey_result *r)
{
    struct aor_request *ar = data;

    ar->auth.pending = NULL;
    apply_key_result(ar, r, ar->conf->auth.mode == AOR_AUTH_JWT_AND_KEY);
    ar->auth.on_done(ar);
}

/* 1 done, 0 pending */
static int check_key(struct aor_request *ar, const char *key, size_t len, int and_jwt)
{
    struct aor_apikey_result r;

    if (ar->worker->apikeys == NULL) {
        refuse(&ar->auth, 401, "unknown_key", "the subscription key is not valid", 0);
        return 1;
    }
    if (aor_apikeys_lookup(ar->worker->apikeys, ar->conf, key, len, aor_now_ms(), on_key_result, ar, &r, &ar->auth.pending) == 1) {
        apply_key_result(ar, &r, and_jwt);
        return 1;
    }
    return 0;
}

/* ---- the stage ------------------------------------------------------------------------ */

int aor_auth_authenticate(struct aor_request *ar, h2o_req_t *req, void (*on_done)(struct aor_request *ar))
{
    struct aor_auth *a = &ar->auth;
    struct aor_mtls_identity cert;
    const char *token = NULL, *key = NULL;
    size_t token_len = 0, key_len = 0;
    int has_token, has_key, has_cert;

    memset(a, 0, sizeof(*a));
    a->on_done = on_done;
    a->method = "none";
    has_cert = aor_mtls_identity(req, &cert);
    if (has_cert) {
        /* the identity a certificate gives, unless a token or key names the tenant */
        if (tenant_ok(cert.cn))
            snprintf(a->tenant, sizeof(a->tenant), "cert:%.200s", cert.cn);
        else
            snprintf(a->tenant, sizeof(a->tenant), "cert:%.16s", cert.thumbprint);
        copy_id(a->subject, cert.cn);
        a->method = "mtls";
    }
    if (ar->conf->auth.mode == AOR_AUTH_NONE) {
        if (!has_cert)
            strcpy(a->tenant, "default");
        return 1;
    }
    has_token = find_bearer(req, &token, &token_len);
    has_key = find_key(ar, req, &key, &key_len);

    switch (ar->conf->auth.mode) {
    case AOR_AUTH_JWT:
        if (!has_token) {
            refuse(a, 401, "missing_credentials", "a bearer token is required", 1);
            return 1;
        }
        if (check_jwt(ar, token, token_len) == 0)
            a->method = "jwt";
        return 1;
    case AOR_AUTH_KEY:
        if (!has_key) {
            refuse(a, 401, "missing_credentials", "a subscription key is required", 0);
            return 1;
        }
        return check_key(ar, key, key_len, 0);
    case AOR_AUTH_JWT_OR_KEY:
        if (has_token) {
            if (check_jwt(ar, token, token_len) == 0)
                a->method = "jwt";
            return 1;
        }
        if (has_key)
            return check_key(ar, key, key_len, 0);
        refuse(a, 401, "missing_credentials", "a bearer token or a subscription key is required", 1);
        return 1;
    case AOR_AUTH_JWT_AND_KEY:
        if (!has_token || !has_key) {
            refuse(a, 401, "missing_credentials", "a bearer token and a subscription key are both required", !has_token);
            return 1;
        }
        if (check_jwt(ar, token, token_len) != 0)
            return 1;
        return check_key(ar, key, key_len, 1);
    case AOR_AUTH_NONE:
        break;
    }
    return 1;
}

void aor_auth_cancel(struct aor_request *ar)
{
    if (ar->auth.pending != NULL) {
        aor_apikeys_cancel(ar->auth.pending);
        ar->auth.pending = NULL;
    }
}

void aor_auth_add_challenge(const struct aor_auth *auth, h2o_req_t *req)
{
    char *v;
    int n;

    if (!auth->bearer_challenge)
        return;
    v = h2o_mem_alloc_pool(&req->pool, 256);
    if (auth->reason != NULL && strcmp(auth->reason, "missing_credentials") == 0)
        n = snprintf(v, 256, "Bearer realm=\"aoai-router\"");
    else if (auth->status == 403) /* RFC 6750 §3.1: a valid token without the required grant */
        n = snprintf(v, 256, "Bearer error=\"insufficient_scope\", error_description=\"%s\"",
                     auth->description != NULL ? auth->description : "insufficient scope");
    else
        n = snprintf(v, 256, "Bearer error=\"invalid_token\", error_description=\"%s\"",
                     auth->description != NULL ? auth->description : "invalid token");
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_WWW_AUTHENTICATE, NULL, v, (size_t)n);
}
