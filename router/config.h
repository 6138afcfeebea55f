/*
 * config — backends.yaml (SPEC §3) parsed by libyaml into an immutable,
 * reference-counted struct aor_config. A reload builds a new one and swaps the
 * pointer; requests in flight keep the one they started with.
 * Owns: parsing, defaults, validation messages ("file:line: message").
 */
#ifndef AOR_CONFIG_H
#define AOR_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct aor_backend_state;
struct aor_deployment_state;
struct aor_keystore;
struct aor_token_source;
struct aor_cred_stats;

enum aor_provider { AOR_PROVIDER_AZURE = 0, AOR_PROVIDER_OPENAI };

enum aor_cred_type {
    AOR_CRED_NONE = 0, /* no auth: block (loopback mocks) */
    AOR_CRED_API_KEY,
    AOR_CRED_MANAGED_IDENTITY,
    AOR_CRED_WORKLOAD_IDENTITY,
    AOR_CRED_CLIENT_SECRET,
    AOR_CRED_OIDC_FEDERATION,
    AOR_CRED_OPENAI_WIF,
};

enum aor_client_cert { AOR_CLIENT_CERT_NONE = 0, AOR_CLIENT_CERT_OPTIONAL, AOR_CLIENT_CERT_REQUIRED };

enum aor_auth_mode { AOR_AUTH_NONE = 0, AOR_AUTH_JWT, AOR_AUTH_KEY, AOR_AUTH_JWT_OR_KEY, AOR_AUTH_JWT_AND_KEY };

struct aor_listen_conf {
    char *address; /* "0.0.0.0", "127.0.0.1", "::" */
    uint16_t port;
    int line;
    struct {
        int enabled;
        char *cert_file, *key_file, *client_ca_file;
        enum aor_client_cert client_cert;
    } tls;
};

/* logical deployment name -> name on this backend */
struct aor_deployment_map {
    char *logical;
    char *upstream;
    /* runtime: the cooldown and headroom of `upstream` on this backend; set by aor_backend_attach(), not by config.c */
    struct aor_deployment_state *state;
};

struct aor_cred_conf {
    enum aor_cred_type type;
    /* api_key: the key itself, read from key_env / key_file at load time; never logged */
    char *api_key;
    /* entra / federation / openai_wif fields, copied verbatim (NULL when absent) */
    char *client_id, *tenant_id, *token_file, *imds_endpoint, *authority_host, *secret; /* secret from secret_env */
    char *token_url, *client_secret, *audience, *azure_client_id, *resource;
    char *identity_provider_id, *service_account_id, *subject_type, *subject_resource;
    /* managed_identity on App Service / Container Apps / Functions: $IDENTITY_ENDPOINT and $IDENTITY_HEADER
     * (a secret) when both are set at load and imds_endpoint is not given; NULL otherwise */
    char *identity_endpoint, *identity_header;
    /* runtime: the token source and its stats for the token types; set by aor_creds_attach() (auth/cred.h), not by config.c */
    struct aor_token_source *source;
    struct aor_cred_stats *stats;
    /*
     * What aor_config_parse() fills in per type (defaults applied, secrets resolved):
     *   api_key           api_key (key_env, or key_file with trailing whitespace trimmed; visible ASCII only)
     *   managed_identity  client_id (NULL = system-assigned), imds_endpoint (default
     *                     http://169.254.169.254/metadata/identity/oauth2/token), resource
     *   workload_identity tenant_id, client_id, token_file (defaults $AZURE_TENANT_ID, $AZURE_CLIENT_ID,
     *                     $AZURE_FEDERATED_TOKEN_FILE; the file is readable at load), authority_host, resource
     *   client_secret     tenant_id, client_id, secret (secret_env or secret_file), authority_host, resource
     *   oidc_federation   token_url, client_id, client_secret (client_secret_env or client_secret_file), tenant_id,
     *                     azure_client_id, audience (default api://AzureADTokenExchange), authority_host, resource
     *   openai_wif        identity_provider_id, service_account_id, subject_type ("managed_identity",
     *                     "workload_identity" or "file"), subject_resource (NULL for file), token_file (file: subject.path),
     * token_url (NULL = the credential's default), plus the managed_identity or workload_identity fields above (not resource /
     * authority_host for MI) authority_host: default $AZURE_AUTHORITY_HOST or https://login.microsoftonline.com/; always ends with
     * one '/'. resource: the Entra resource the token is for, default https://cognitiveservices.azure.com (scope: + "/.default").
     */
};

struct aor_backend_conf {
    char *name;
    char *url; /* without trailing '/'; provider openai defaults to https://api.openai.com */
    char *region;
    enum aor_provider provider;
    int priority;                           /* default 1; lower is preferred; 0..INT_MAX */
    unsigned weight;                        /* default 1; 1..1000 */
    uint64_t tpm;                           /* 0 = unknown; at most 10^12 */
    struct aor_deployment_map *deployments; /* NULL + 0 => serves any name unchanged */
    size_t num_deployments;
    struct aor_cred_conf cred;
    int line;
    /* runtime state shared by every config generation that names this backend (its circuit;
     * cooldowns and headroom are per deployment); set by aor_backend_attach() after load, not by config.c */
    struct aor_backend_state *state;
};

struct aor_jwt_issuer_conf {
    char *issuer, *openid_config, *jwks_uri, *jwks_file, *secret; /* secret from secret_env (or secret_file), >= 32 bytes */
    char **audiences;
    size_t num_audiences;
    struct {
        char *claim;
        char **values;
        size_t num_values;
    } * required_claims;
    size_t num_required_claims;
    char **tenant_claims; /* default: tid, azp, sub */
    size_t num_tenant_claims;
    unsigned clock_skew_s;         /* default 60 */
    uint64_t max_token_lifetime_s; /* default 86400 */
    char **algorithms;             /* NULL = every supported asymmetric alg; issuers with a secret default to HS256, HS384, HS512 */
    size_t num_algorithms;
    unsigned jwks_refetch_cooldown_s; /* default 30 */
    int line;
};

struct aor_static_key_conf {
    char sha256[65]; /* lower-case hex */
    char *tenant;
};

struct aor_tenant_conf {
    char *name;
    int64_t tpm, rpm, tokens_per_day, tokens_per_month; /* -1 = unlimited (default) */
    char **deployments;                                 /* NULL = all; never an empty list */
    size_t num_deployments;
    int64_t default_max_tokens; /* added to the admission estimate of a completion request whose body names no
                                   completion limit (README "Quotas"); 0 = none (default), at most
                                   AOR_TENANT_MAX_DEFAULT_MAX_TOKENS */
    unsigned set;               /* what the entry names (1 tpm, 2 rpm, 4 day, 8 month, 16 deployments, 32 default_max_tokens); the
                                   others are tenants.default's */
    unsigned named; /* `set` with tenants.default's: the fields the config gives this tenant (the rest fall back further) */
};

#define AOR_TENANT_MAX_DEFAULT_MAX_TOKENS 1000000 /* tenants.<T>.default_max_tokens: above any model's output limit */

struct aor_config {
    int refcnt; /* atomic; see aor_config_retain/release */
    char *path;
    struct aor_listen_conf *listeners;
    size_t num_listeners;
    unsigned threads; /* resolved: 0 in the file becomes the number of cores */
    struct {
        char *url;       /* NULL => in-process state */
        char *prefix;    /* default "aoai:" (also without a redis section) */
        int fail_closed; /* on_failure: closed */
        char *password;  /* AUTH password from password_env / password_file; NULL = none. Never inline in url */
        char *ca_file;   /* PEM CA bundle trusted for rediss:// besides the system's; NULL = none */
        /* redis.auth (keyless Entra ID, Azure Cache for Redis / Azure Managed Redis): `AUTH <object_id> <token>`.
         * cred.type is AOR_CRED_NONE without it, else managed_identity, workload_identity or client_secret, filled
         * in as for a backend (below) but with resource default https://redis.azure.com. Exclusive with password */
        struct aor_cred_conf cred;
        char *object_id; /* the identity's object (principal) id: the AUTH user name; visible ASCII */
    } redis;
    struct {
        /* every field is >= 1; the *_ms fields are at most 86400000, max_body_bytes at most 1 GiB */
        uint64_t max_body_bytes;             /* default 16777216 */
        uint64_t upstream_timeout_ms;        /* default 120000: whole upstream transfer */
        uint64_t connect_timeout_ms;         /* default 10000 (capped at upstream_timeout_ms) */
        unsigned max_attempts;               /* default 3 */
        uint64_t max_cooldown_ms;            /* default 300000: cap on a backend's retry-after */
        uint64_t default_cooldown_ms;        /* default 10000: a 429 without retry-after (capped at max_cooldown_ms) */
        uint64_t drain_timeout_ms;           /* default 30000: SIGTERM waits this long for in-flight requests */
        uint64_t max_header_bytes;           /* default 32768: decoded name+value bytes of a request's headers (431 over it) */
        unsigned max_header_count;           /* default 100: request headers (431 over it) */
        unsigned max_connections;            /* default 10000: client connections per process; more wait in the accept queue */
        uint64_t max_inflight_body_bytes;    /* default 268435456: request bodies held at once, process-wide (503 overloaded) */
        unsigned max_streams_per_connection; /* default 100: concurrent HTTP/2 streams per client connection */
        unsigned max_backend_connections;    /* default 256: connections to one backend origin, per worker */
    } limits;
    /* operations forwarded besides the inference ones (SPEC §4); "METHOD /path", a trailing '*' matches a prefix */
    struct aor_passthrough_conf {
        char *method;
        char *path; /* without the '*' */
        size_t path_len;
        int prefix; /* the entry ended with '*' */
    } * passthrough;
    size_t num_passthrough;
    struct {
        unsigned failures; /* default 5 */
        uint64_t open_ms;  /* default 30000 */
    } circuit;
    struct {
        int enabled; /* separate listener (address or port given); /status and /status.json only there */
        char *address;
        uint16_t port;
        unsigned max_tenants; /* default 1000: distinct tenant label values; later tenants are "other" */
    } metrics;
    struct {
        enum aor_auth_mode mode; /* NONE when auth: is omitted or says mode: none */
        int open_on_purpose;     /* auth: { mode: none } */
        int same_tenant;         /* jwt_and_key: the token's tenant must equal the key's (else 403) */
        struct aor_jwt_issuer_conf *jwt;
        size_t num_jwt;
        char **key_headers; /* default api-key, Ocp-Apim-Subscription-Key (also when auth: is omitted) */
        size_t num_key_headers;
        struct aor_static_key_conf *static_keys;
        size_t num_static_keys;
    } auth;
    struct aor_tenant_conf *tenants; /* tenants: section; "default" may be among them */
    size_t num_tenants;
    struct aor_backend_conf *backends;
    size_t num_backends;
    /* runtime: auth.jwt[i]'s keystore (owned by the keystore registry; the array is freed
     * with the config). Set by aor_keystores_attach() after load, not by config.c */
    struct aor_keystore **keystores;
    uint64_t generation;  /* runtime: 1 for the first config, +1 per reload (caches key on it) */
    int64_t loaded_at_ms; /* runtime: unix ms when this generation was loaded (the status page) */
};

/**
 * Parses and validates `path` (a regular file of at most 1 MiB). Every problem is written to
 * `errs` (may be NULL) as "path:line: key.path: message\n" — all of them, not just the first;
 * problems with the file itself are reported at line 1. Unknown keys are problems (keys
 * starting with "x-" are free). Warnings ("path:line: warning: key.path: message\n": auth
 * mode none, plain http:// key and token endpoints off loopback) go to `errs` too but do
 * not fail the load. Secrets from *_env / *_file are resolved
 * here (getenv: call it from one thread at a time) and never appear in a message. Readable-file
 * checks (tls, jwks_file, token_file) run relative to the current directory.
 * Returns a config with refcnt 1, or NULL when at least one problem was found.
 */
struct aor_config *aor_config_load(const char *path, FILE *errs);

/*
 * Flags of aor_config_load_flags. AOR_CONFIG_NO_SECRETS (`--check --no-secrets`, for CI without
 * the secrets' environment): every key is still parsed and checked (shape, types, ranges, one of
 * *_env / *_file, references between sections), but *_env variables are not read, *_file secrets
 * and other files (tls, jwks_file, token_file) are not opened, and the workload-identity defaults
 * from AZURE_* are not required: each such secret holds a placeholder, so the config it returns
 * must never serve. AOR_CONFIG_REDIS_SECRET (with NO_SECRETS; the operator commands) still resolves
 * redis.password_env / password_file.
 */
#define AOR_CONFIG_NO_SECRETS 1u
#define AOR_CONFIG_REDIS_SECRET 2u
struct aor_config *aor_config_load_flags(const char *path, FILE *errs, unsigned flags);

/* same, from an in-memory document (unit tests); `name` is used in messages */
struct aor_config *aor_config_parse(const char *name, const char *text, size_t len, FILE *errs);

/* takes one more reference (atomic; any thread) */
void aor_config_retain(struct aor_config *conf);
/* drops one reference (atomic; any thread); frees the config, zeroing its secrets, when the last one goes. NULL is a no-op */
void aor_config_release(struct aor_config *conf);

/* backend by name, NULL if absent */
const struct aor_backend_conf *aor_config_find_backend(const struct aor_config *conf, const char *name);

/* sentinel returned by aor_config_map_deployment(); an empty string, compare the pointer */
extern const char aor_config_deployment_unchanged[];

/**
 * The name the logical deployment `logical` (`logical_len` bytes, need not be NUL-terminated;
 * matched byte for byte, case-sensitively) has on `backend`:
 *  - NULL: the backend has a deployments map without that name, so it does not serve it
 *    (also for a NULL backend, a NULL `logical` or `logical_len` 0);
 *  - aor_config_deployment_unchanged: the backend has no deployments map and serves every
 *    name as is — use `logical` / `logical_len` themselves;
 *  - otherwise the NUL-terminated upstream name, owned by the config (valid while the caller
 *    holds its reference).
 * Typical use:
 *     const char *up = aor_config_map_deployment(b, name, len);
 *     if (up == NULL) continue;
 *     size_t up_len = up == aor_config_deployment_unchanged ? (up = name, len) : strlen(up);
 * Pure lookup: no allocation, safe from any thread.
 */
const char *aor_config_map_deployment(const struct aor_backend_conf *backend, const char *logical, size_t logical_len);

#endif
