/*
 * auth.c — see auth.h.
 *
 * Modes (auth.mode):
 *   (no auth:)   every request is tenant "default" — or, on a TLS listener, the client
 *                certificate's identity when one was presented
 *   jwt          a valid Bearer token is required
 *   key          a valid subscription key is required
 *   jwt_or_key   a Bearer token if present, else a subscription key
 *   jwt_and_key  both valid; the key names the tenant (with auth.same_tenant: true the token's
 *                tenant must equal the key's, else 403)
 * A client certificate names the tenant ("cert:<CN>") only when no JWT or key does.
 */
#include <stdio.h>
#include <stdlib.h>
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
#include "tenant.h"
#include "tokencache.h"

#define STACK_REQUIRED_CLAIMS 32 /* more are allocated */

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

/* tenant names go into Redis keys, metrics labels and log lines: one rule for every source (tenant.h) */
static int tenant_ok(const char *s)
{
    return aor_tenant_name_ok(s, strlen(s));
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

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/*
 * ?subscription-key= in any spelling the upstream path drops (aor_route_param_named: case-insensitive,
 * percent-decoded name): the first one is the key, its value percent-decoded (in the request's pool).
 * Every one is stripped before forwarding, used or not.
 */
static int find_query_key(const struct aor_request *ar, h2o_req_t *req, const char **key, size_t *len)
{
    const char *q = ar->route.query;
    size_t qlen = ar->route.query_len, i = 0;

    while (q != NULL && i < qlen) {
        const char *p = q + i, *amp = memchr(p, '&', qlen - i), *eq, *v;
        size_t plen = amp != NULL ? (size_t)(amp - p) : qlen - i, vlen, j, n = 0;
        char *out;
        i += plen + 1;
        if (plen == 0 || !aor_route_param_named(p, plen, "subscription-key") || (eq = memchr(p, '=', plen)) == NULL)
            continue;
        v = eq + 1;
        vlen = plen - (size_t)(v - p);
        if (memchr(v, '%', vlen) == NULL) {
            *key = v;
            *len = vlen;
            return 1;
        }
        out = h2o_mem_alloc_pool(&req->pool, vlen);
        for (j = 0; j != vlen; ++j) {
            if (v[j] == '%' && j + 2 < vlen && hexval(v[j + 1]) >= 0 && hexval(v[j + 2]) >= 0) {
                out[n++] = (char)(hexval(v[j + 1]) * 16 + hexval(v[j + 2]));
                j += 2;
            } else {
                out[n++] = v[j];
            }
        }
        *key = out;
        *len = n;
        return 1;
    }
    return 0;
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
    return find_query_key(ar, req, key, len);
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
    struct aor_jwt_claim_rule stack_rules[STACK_REQUIRED_CLAIMS], *rules = stack_rules;
    struct aor_jwt_policy pol;
    struct aor_jwks *keys;
    size_t i;
    int rc;

    memset(res, 0, sizeof(*res));
    if (ks == NULL || (keys = aor_keystore_current(ks)) == NULL) {
        /* only a token that may be valid waits for keys: one that is no JWT of this issuer even
         * unverified is refused now (and costs no 5 s wait) */
        char iss[1024];
        int n = aor_jwt_peek_issuer(token, len, iss, sizeof(iss));
        rc = n < 0 ? (len > AOR_JWT_MAX_TOKEN ? AOR_JWT_E_TOO_LARGE : AOR_JWT_E_MALFORMED)
             : ((size_t)n != strlen(ic->issuer) || memcmp(iss, ic->issuer, (size_t)n) != 0) ? AOR_JWT_E_ISSUER
                                                                                            : 0;
        if (rc != 0) {
            res->http_status = aor_jwt_http_status(rc);
            res->reason = aor_jwt_reason(rc);
            res->error_description = aor_jwt_description(rc);
            return rc;
        }
        res->http_status = 503;
        res->reason = "keys_unavailable";
        res->error_description = "the issuer's signing keys are not available yet";
        return 0;
    }
    /* every required claim is enforced, however many the config lists (the config bounds the list) */
    if (ic->num_required_claims > STACK_REQUIRED_CLAIMS && (rules = malloc(ic->num_required_claims * sizeof(*rules))) == NULL) {
        aor_jwks_release(keys);
        res->http_status = 500;
        res->reason = aor_jwt_reason(AOR_JWT_E_INTERNAL);
        res->error_description = aor_jwt_description(AOR_JWT_E_INTERNAL);
        return AOR_JWT_E_INTERNAL;
    }
    for (i = 0; i != ic->num_required_claims; ++i) {
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
    if (rules != stack_rules)
        free(rules);
    if (res->unknown_kid)
        aor_keystore_request_refetch(ks); /* rotation? single flight and a cooldown live in the keystore */
    return rc;
}

/* the JWT part of the stage: 0 and the identity in `a`, or -1 with the refusal in `a` */
static int check_jwt(struct aor_request *ar, const char *token, size_t len, int need_tenant)
{
    struct aor_auth *a = &ar->auth;
    const struct aor_config *conf = ar->conf;
    struct aor_tokencache *cache = ar->worker->tokens;
    struct aor_tokencache_key key;
    struct aor_tokencache_value v;
    /* a reload may change the policy, a new key set may lack a key the IdP withdrew: entries
     * decided under another config or another key set of any issuer miss */
    uint64_t gen = conf->generation;
    int64_t now = aor_now_ms();
    int cached = 0, have_key = 0;
    size_t i;

    for (i = 0; conf->keystores != NULL && i != conf->auth.num_jwt; ++i)
        if (conf->keystores[i] != NULL)
            gen = gen * 1000003u + aor_keystore_updates(conf->keystores[i]);

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
                v.tenant = res.tenant; /* "" unless a 403 (missing_claim) of an authentic token */
                v.sub = res.sub;
                v.oid = res.oid;
                v.client_id = res.client_id;
                aor_tokencache_put(cache, &key, gen, &v, now);
            }
            if (res.http_status == 403) { /* the access log names who was refused */
                copy_id(a->subject, res.sub[0] != '\0' ? res.sub : res.oid);
                copy_id(a->client_id, res.client_id);
                snprintf(a->tenant, sizeof(a->tenant), "%s", res.tenant);
            }
            /* keys not loaded (503) is the router's trouble, not the token's: no challenge */
            refuse(a, res.http_status, res.reason, res.error_description, res.http_status != 503);
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
            if (aor_jwt_http_status(v.err) == 403) {
                copy_id(a->subject, v.sub != NULL && v.sub[0] != '\0' ? v.sub : v.oid);
                copy_id(a->client_id, v.client_id);
                snprintf(a->tenant, sizeof(a->tenant), "%s", v.tenant != NULL ? v.tenant : "");
            }
            refuse(a, aor_jwt_http_status(v.err), aor_jwt_reason(v.err), aor_jwt_description(v.err), 1);
            return -1;
        }
        copy_id(a->subject, v.sub[0] != '\0' ? v.sub : v.oid);
        copy_id(a->client_id, v.client_id);
        snprintf(a->tenant, sizeof(a->tenant), "%s", v.tenant);
    }
    /* the claim rule of jwt.c already refused a present tenant claim that is no tenant name; what
     * is left is a token that names none, which is fine when the key names the tenant */
    if (need_tenant && !tenant_ok(a->tenant)) {
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
    /* the access log names the credential and, for a known key that is refused, its tenant */
    a->method = and_jwt ? "jwt+key" : "key";
    if ((r->status == AOR_APIKEY_REVOKED || r->status == AOR_APIKEY_TENANT_DISABLED) && !and_jwt)
        snprintf(a->tenant, sizeof(a->tenant), "%s", r->tenant);
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
    case AOR_APIKEY_BUSY:
        refuse(a, 503, "lookup_busy", "too many subscription key lookups are in flight; retry", 0);
        return;
    case AOR_APIKEY_UNAVAILABLE:
        /* Redis is down: a key seen recently keeps its tenant when the operator chose on_failure: open */
        if (!ar->conf->redis.fail_closed && r->tenant[0] != '\0')
            break;
        refuse(a, 503, "store_unavailable", "the key store is unavailable", 0);
        return;
    }
    /* jwt_and_key: the key names the tenant (APIM's subscription model), the token only has to be
     * valid; auth.same_tenant: true also requires the token to name the same tenant */
    if (and_jwt && ar->conf->auth.same_tenant && strcmp(a->tenant, r->tenant) != 0) {
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
    /* the key cache measures intervals (TTL, staleness): the loop's monotonic clock, not the wall clock */
    if (aor_apikeys_lookup(ar->worker->apikeys, ar->conf, key, len, (int64_t)uv_now(&ar->worker->loop), on_key_result, ar, &r,
                           &ar->auth.pending) == 1) {
        apply_key_result(ar, &r, and_jwt);
        return 1;
    }
    return 0;
}

/* ---- the stage ------------------------------------------------------------------------ */

static int keys_unavailable(const struct aor_auth *a)
{
    return a->status == 503 && a->reason != NULL && strcmp(a->reason, "keys_unavailable") == 0;
}

static void on_key_wait_tick(h2o_timeout_entry_t *entry);

/* the request no longer waits for keys (done, over, or gone): its place is free */
static void end_key_wait(struct aor_request *ar)
{
    if (h2o_timeout_is_linked(&ar->auth.key_wait))
        h2o_timeout_unlink(&ar->auth.key_wait);
    if (ar->auth.key_wait_started == 1) {
        ar->auth.key_wait_started = 2;
        --ar->worker->auth_key_waiters;
    }
}

/*
 * The token's issuer has no keys yet (cold start, IdP slow): wait for the first fetch on the
 * loop — the worker's 100 ms timeout list re-runs the stage — for at most AOR_AUTH_KEY_WAIT_MS
 * from the request's first attempt. 1: wait (the refusal is cleared), 0: the wait is over (the
 * 503 stands).
 */
static int wait_for_keys(struct aor_request *ar)
{
    struct aor_auth *a = &ar->auth;
    int64_t now = (int64_t)uv_now(&ar->worker->loop);

    if (!a->key_wait_started) {
        if (ar->worker->auth_key_waiters >= AOR_AUTH_MAX_KEY_WAITERS)
            return 0;
        a->key_wait_started = 1;
        a->key_wait_deadline = now + AOR_AUTH_KEY_WAIT_MS;
        ++ar->worker->auth_key_waiters;
    }
    if (now >= a->key_wait_deadline) {
        end_key_wait(ar);
        return 0;
    }
    a->key_wait.cb = on_key_wait_tick;
    h2o_timeout_link(ar->worker->ctx.loop, &ar->worker->ctx.hundred_ms_timeout, &a->key_wait);
    return 1;
}

/* the mode's checks with the credentials found; 1 done (ar->auth filled), 0 pending */
static int run_mode(struct aor_request *ar)
{
    struct aor_auth *a = &ar->auth;
    int same = ar->conf->auth.same_tenant;

    a->status = 0;
    a->reason = a->description = NULL;
    a->bearer_challenge = 0;
    switch (ar->conf->auth.mode) {
    case AOR_AUTH_JWT:
        if (!a->has_token) {
            refuse(a, 401, "missing_credentials", "a bearer token is required", 1);
            return 1;
        }
        a->method = "jwt"; /* also on a refusal: the access log names the credential tried */
        check_jwt(ar, a->token, a->token_len, 1);
        break;
    case AOR_AUTH_KEY:
        if (!a->has_key) {
            refuse(a, 401, "missing_credentials", "a subscription key is required", 0);
            return 1;
        }
        return check_key(ar, a->key, a->key_len, 0);
    case AOR_AUTH_JWT_OR_KEY:
        if (a->has_token) {
            a->method = "jwt";
            check_jwt(ar, a->token, a->token_len, 1);
            break;
        }
        if (a->has_key)
            return check_key(ar, a->key, a->key_len, 0);
        refuse(a, 401, "missing_credentials", "a bearer token or a subscription key is required", 1);
        return 1;
    case AOR_AUTH_JWT_AND_KEY:
        if (!a->has_token || !a->has_key) {
            refuse(a, 401, "missing_credentials", "a bearer token and a subscription key are both required", !a->has_token);
            return 1;
        }
        if (check_jwt(ar, a->token, a->token_len, same) != 0)
            break;
        end_key_wait(ar);
        return check_key(ar, a->key, a->key_len, 1);
    case AOR_AUTH_NONE:
        return 1;
    }
    if (keys_unavailable(a) && wait_for_keys(ar))
        return 0;
    end_key_wait(ar);
    return 1;
}

static void on_key_wait_tick(h2o_timeout_entry_t *entry)
{
    struct aor_request *ar = H2O_STRUCT_FROM_MEMBER(struct aor_request, auth.key_wait, entry);

    if (run_mode(ar))
        ar->auth.on_done(ar);
}

int aor_auth_authenticate(struct aor_request *ar, h2o_req_t *req, void (*on_done)(struct aor_request *ar))
{
    struct aor_auth *a = &ar->auth;
    struct aor_mtls_identity cert;
    int has_cert;

    memset(a, 0, sizeof(*a));
    a->on_done = on_done;
    a->method = "none";
    has_cert = aor_mtls_identity(req, &cert);
    if (has_cert) {
        /* the identity a certificate gives, unless a token or key names the tenant: its CN when
         * that is a tenant name (mtls.h), else (no CN, or one refused) its thumbprint */
        if (cert.cn[0] != '\0')
            snprintf(a->tenant, sizeof(a->tenant), "cert:%s", cert.cn);
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
    a->has_token = find_bearer(req, &a->token, &a->token_len);
    a->has_key = find_key(ar, req, &a->key, &a->key_len);
    return run_mode(ar);
}

void aor_auth_cancel(struct aor_request *ar)
{
    end_key_wait(ar);
    if (ar->auth.pending != NULL) {
        aor_apikeys_cancel(ar->auth.pending);
        ar->auth.pending = NULL;
    }
}

void aor_auth_add_challenge(const struct aor_auth *auth, h2o_req_t *req)
{
    char *v;
    int n;

    if (auth->status == 503) {
        /* the router's own trouble (keys not loaded, key store down): a client may come back */
        const char *after = keys_unavailable(auth) ? AOR_AUTH_KEYS_RETRY_AFTER : "1";
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL, after, strlen(after));
    }
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
