/*
 * test_config.c — router/config.c: a full SPEC §3 example, defaults, every validation
 * rule (message text and line), secret resolution, refcounting, deployment mapping, and
 * the broken-config fixtures under tests/fixtures/config/ (run from the source root).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* GNU strerror_r, explicit_bzero */
#endif
#include "config.h"
#include "quota.h"
#include "test.h"

#include <dirent.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define FIXTURES_DIR "tests/fixtures/config"

static char tmpdir[64];
static char *errs; /* what the last parse() printed */

static struct aor_config *parse(const char *yaml)
{
    size_t len = 0;
    FILE *f;

    free(errs);
    errs = NULL;
    f = open_memstream(&errs, &len);
    struct aor_config *conf = aor_config_parse("t.yaml", yaml, strlen(yaml), f);
    fclose(f);
    return conf;
}

/* parse() of a printf-built document */
__attribute__((format(printf, 1, 2))) static struct aor_config *parsef(const char *fmt, ...)
{
    char *yaml = NULL;
    va_list ap;

    va_start(ap, fmt);
    if (vasprintf(&yaml, fmt, ap) < 0)
        abort();
    va_end(ap);
    struct aor_config *conf = parse(yaml);
    free(yaml);
    return conf;
}

static int count_lines(const char *s)
{
    int n = 0;
    for (; s != NULL && *s != '\0'; ++s)
        n += *s == '\n';
    return n;
}

static const char *tmp(const char *name)
{
    static char buf[16][128];
    static int next;
    char *p = buf[next++ % 16];
    snprintf(p, sizeof(buf[0]), "%s/%s", tmpdir, name);
    return p;
}

static void write_file(const char *path, const char *content)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        abort();
    fputs(content, f);
    fclose(f);
}

/* the document fails, and the output has `msg` (e.g. "t.yaml:3: listen[0].port: expected") */
#define EXPECT_PROBLEM(conf_expr, msg)                                                                                             \
    do {                                                                                                                           \
        struct aor_config *c_ = (conf_expr);                                                                                       \
        CHECK(c_ == NULL);                                                                                                         \
        aor_config_release(c_);                                                                                                    \
        if (errs == NULL || strstr(errs, (msg)) == NULL)                                                                           \
            fprintf(stderr, "%s:%d: expected \"%s\" in:\n%s", __FILE__, __LINE__, (msg), errs ? errs : "(null)\n");                \
        CHECK(errs != NULL && strstr(errs, (msg)) != NULL);                                                                        \
    } while (0)

/* ... and it is the only problem */
#define EXPECT_ONLY_PROBLEM(conf_expr, msg)                                                                                        \
    do {                                                                                                                           \
        EXPECT_PROBLEM(conf_expr, msg);                                                                                            \
        CHECK_EQ_INT(count_lines(errs), 1);                                                                                        \
    } while (0)

#define EXPECT_OK(conf_var, conf_expr)                                                                                             \
    do {                                                                                                                           \
        (conf_var) = (conf_expr);                                                                                                  \
        if ((conf_var) == NULL)                                                                                                    \
            fprintf(stderr, "%s:%d: unexpected problems:\n%s", __FILE__, __LINE__, errs);                                          \
        CHECK((conf_var) != NULL);                                                                                                 \
        CHECK_EQ_STR(errs, "");                                                                                                    \
    } while (0)

/* line 1-2 of most documents below; backends start at line 3 */
#define LISTEN "listen:\n  - { address: 127.0.0.1, port: 8080 }\n"
#define BACKEND "backends:\n  - { name: b1, url: \"http://127.0.0.1:9000\" }\n"
/* appended to documents whose listeners are not loopback (omitting auth: is refused there) */
#define KEYAUTH "auth: { mode: key }\n"

/* ---- the SPEC example, every field ---------------------------------------------------------------------------------- */

static void test_full_example(void)
{
    struct aor_config *conf;

    write_file(tmp("cert.pem"), "cert");
    write_file(tmp("key.pem"), "key");
    write_file(tmp("ca.pem"), "ca");
    write_file(tmp("jwks.json"), "{\"keys\":[]}");
    write_file(tmp("token"), "eyJ...");
    write_file(tmp("fed_secret"), "fed-secret-value\n");
    write_file(tmp("key.txt"), "file-api-key \r\n\n");
    setenv("AOR_TEST_EASTUS_KEY", "eastus-api-key", 1);
    setenv("AOR_TEST_REDIS_PW", "redis pw", 1);
    setenv("AOR_TEST_HS_SECRET", "0123456789abcdef0123456789abcdef!", 1);
    setenv("AOR_TEST_SP_SECRET", "sp-secret", 1);
    unsetenv("AZURE_AUTHORITY_HOST");

    EXPECT_OK(
        conf,
        parsef("# the SPEC §3 example, plus every optional key\n"
               "listen:\n"
               "  - { address: 0.0.0.0, port: 8080 }\n"
               "  - { address: \"::\", port: 8443, tls: { cert_file: %s, key_file: %s,\n"
               "      client_ca_file: %s, client_cert: optional } }\n"
               "threads: 4\n"
               "redis: { url: redis://127.0.0.1:6379/0, prefix: \"gw:\", on_failure: closed, password_env: AOR_TEST_REDIS_PW }\n"
               "limits: { max_body_bytes: 1048576, upstream_timeout_ms: 60000, connect_timeout_ms: 90000, max_attempts: 5,\n"
               "          max_cooldown_ms: 120000, default_cooldown_ms: 5000, drain_timeout_ms: 15000 }\n"
               "circuit: { failures: 3, open_ms: 10000 }\n"
               "metrics: { address: 127.0.0.1, port: 9100 }\n"
               "auth:\n"
               "  mode: jwt_or_key\n"
               "  jwt:\n"
               "    - issuer: https://login.microsoftonline.com/tid/v2.0\n"
               "      openid_config: https://login.microsoftonline.com/tid/v2.0/.well-known/openid-configuration\n"
               "      audiences: [api://aoai-router, other]\n"
               "      required_claims: { roles: [Gateway.Use, Gateway.Admin], scp: access }\n"
               "      tenant_claims: [azp, sub]\n"
               "      clock_skew_s: 30\n"
               "      max_token_lifetime_s: 3600\n"
               "      algorithms: [RS256, PS256, ES256, EdDSA]\n"
               "      jwks_refetch_cooldown_s: 10\n"
               "    - issuer: local\n"
               "      secret_env: AOR_TEST_HS_SECRET\n"
               "      audiences: aud1\n"
               "    - issuer: file-issuer\n"
               "      jwks_file: %s\n"
               "      audiences: [x]\n"
               "      x-note: operators' notes are free\n"
               "  keys:\n"
               "    headers: [api-key, X-Key]\n"
               "    static: [ { sha256: \"%s\", tenant: t1 } ]\n"
               "tenants:\n"
               "  default: { tpm: 10000, rpm: 60 }\n"
               "  t1: { tpm: -1, tokens_per_day: 0, tokens_per_month: 5000000, deployments: [gpt-4o, emb3] }\n"
               "  t2:\n"
               "backends:\n"
               "  - name: eastus\n"
               "    url: https://contoso-eastus.openai.azure.com/\n"
               "    region: eastus\n"
               "    priority: 1\n"
               "    weight: 2\n"
               "    tpm: 300000\n"
               "    deployments: { gpt-4o: gpt-4o, text-embedding-3-small: emb3 }\n"
               "    auth: { type: api_key, key_env: AOR_TEST_EASTUS_KEY }\n"
               "  - name: swedencentral\n"
               "    url: https://contoso-swc.openai.azure.com\n"
               "    priority: 2\n"
               "    auth: { type: managed_identity, client_id: uami-client-id }\n"
               "  - name: westus\n"
               "    url: https://contoso-wus.openai.azure.com\n"
               "    priority: 2\n"
               "    auth: { type: workload_identity, tenant_id: tenant-guid, client_id: app-id,\n"
               "            token_file: %s }\n"
               "  - name: openai\n"
               "    provider: openai\n"
               "    priority: 3\n"
               "    deployments: { gpt-4o: gpt-4o }\n"
               "    auth: { type: openai_wif, identity_provider_id: idp, service_account_id: sa,\n"
               "            subject: { type: managed_identity, resource: \"api://app-client-id\" } }\n"
               "  - name: sp\n"
               "    url: http://127.0.0.1:9001\n"
               "    auth: { type: client_secret, tenant_id: contoso.onmicrosoft.com, client_id: sp-id,\n"
               "            secret_env: AOR_TEST_SP_SECRET, authority_host: \"http://127.0.0.1:9002//\",\n"
               "            resource: \"https://example.test\" }\n"
               "  - name: fed\n"
               "    url: http://127.0.0.1:9003\n"
               "    auth: { type: oidc_federation, token_url: \"http://127.0.0.1:9004/oauth/token\", client_id: auth0-id,\n"
               "            client_secret_file: %s, tenant_id: tguid, azure_client_id: az-app }\n"
               "  - name: mock\n"
               "    url: http://127.0.0.1:9005\n"
               "  - name: filekey\n"
               "    url: http://127.0.0.1:9006\n"
               "    auth: { type: api_key, key_file: %s }\n",
               tmp("cert.pem"), tmp("key.pem"), tmp("ca.pem"), tmp("jwks.json"),
               "ABCDEF0123456789abcdef0123456789ABCDEF0123456789abcdef0123456789", tmp("token"), tmp("fed_secret"),
               tmp("key.txt")));
    if (conf == NULL)
        return;

    CHECK_EQ_INT(conf->refcnt, 1);
    CHECK_EQ_STR(conf->path, "t.yaml");

    CHECK_EQ_INT(conf->num_listeners, 2);
    CHECK_EQ_STR(conf->listeners[0].address, "0.0.0.0");
    CHECK_EQ_INT(conf->listeners[0].port, 8080);
    CHECK_EQ_INT(conf->listeners[0].line, 3);
    CHECK_EQ_INT(conf->listeners[0].tls.enabled, 0);
    CHECK_EQ_STR(conf->listeners[1].address, "::");
    CHECK_EQ_INT(conf->listeners[1].port, 8443);
    CHECK_EQ_INT(conf->listeners[1].line, 4);
    CHECK_EQ_INT(conf->listeners[1].tls.enabled, 1);
    CHECK_EQ_STR(conf->listeners[1].tls.cert_file, tmp("cert.pem"));
    CHECK_EQ_STR(conf->listeners[1].tls.key_file, tmp("key.pem"));
    CHECK_EQ_STR(conf->listeners[1].tls.client_ca_file, tmp("ca.pem"));
    CHECK_EQ_INT(conf->listeners[1].tls.client_cert, AOR_CLIENT_CERT_OPTIONAL);

    CHECK_EQ_INT(conf->threads, 4);

    CHECK_EQ_STR(conf->redis.url, "redis://127.0.0.1:6379/0");
    CHECK_EQ_STR(conf->redis.prefix, "gw:");
    CHECK_EQ_INT(conf->redis.fail_closed, 1);
    CHECK_EQ_STR(conf->redis.password, "redis pw");

    CHECK_EQ_INT(conf->limits.max_body_bytes, 1048576);
    CHECK_EQ_INT(conf->limits.upstream_timeout_ms, 60000);
    CHECK_EQ_INT(conf->limits.connect_timeout_ms, 60000); /* capped at upstream_timeout_ms */
    CHECK_EQ_INT(conf->limits.max_attempts, 5);
    CHECK_EQ_INT(conf->limits.max_cooldown_ms, 120000);
    CHECK_EQ_INT(conf->limits.default_cooldown_ms, 5000);
    CHECK_EQ_INT(conf->limits.drain_timeout_ms, 15000);
    CHECK_EQ_INT(conf->circuit.failures, 3);
    CHECK_EQ_INT(conf->circuit.open_ms, 10000);
    CHECK_EQ_INT(conf->metrics.enabled, 1);
    CHECK_EQ_STR(conf->metrics.address, "127.0.0.1");
    CHECK_EQ_INT(conf->metrics.port, 9100);

    CHECK_EQ_INT(conf->auth.mode, AOR_AUTH_JWT_OR_KEY);
    CHECK_EQ_INT(conf->auth.num_jwt, 3);
    const struct aor_jwt_issuer_conf *j = &conf->auth.jwt[0];
    CHECK_EQ_STR(j->issuer, "https://login.microsoftonline.com/tid/v2.0");
    CHECK_EQ_STR(j->openid_config, "https://login.microsoftonline.com/tid/v2.0/.well-known/openid-configuration");
    CHECK(j->jwks_uri == NULL && j->jwks_file == NULL && j->secret == NULL);
    CHECK_EQ_INT(j->num_audiences, 2);
    CHECK_EQ_STR(j->audiences[0], "api://aoai-router");
    CHECK_EQ_STR(j->audiences[1], "other");
    CHECK_EQ_INT(j->num_required_claims, 2);
    CHECK_EQ_STR(j->required_claims[0].claim, "roles");
    CHECK_EQ_INT(j->required_claims[0].num_values, 2);
    CHECK_EQ_STR(j->required_claims[0].values[0], "Gateway.Use");
    CHECK_EQ_STR(j->required_claims[0].values[1], "Gateway.Admin");
    CHECK_EQ_STR(j->required_claims[1].claim, "scp");
    CHECK_EQ_INT(j->required_claims[1].num_values, 1);
    CHECK_EQ_STR(j->required_claims[1].values[0], "access");
    CHECK_EQ_INT(j->num_tenant_claims, 2);
    CHECK_EQ_STR(j->tenant_claims[0], "azp");
    CHECK_EQ_STR(j->tenant_claims[1], "sub");
    CHECK_EQ_INT(j->clock_skew_s, 30);
    CHECK_EQ_INT(j->max_token_lifetime_s, 3600);
    CHECK_EQ_INT(j->jwks_refetch_cooldown_s, 10);
    CHECK_EQ_INT(j->num_algorithms, 4);
    CHECK_EQ_STR(j->algorithms[0], "RS256");
    CHECK_EQ_STR(j->algorithms[3], "EdDSA");
    CHECK_EQ_INT(j->line, 15);

    j = &conf->auth.jwt[1];
    CHECK_EQ_STR(j->issuer, "local");
    CHECK_EQ_STR(j->secret, "0123456789abcdef0123456789abcdef!");
    CHECK_EQ_INT(j->num_audiences, 1);
    CHECK_EQ_STR(j->audiences[0], "aud1");
    CHECK_EQ_INT(j->num_required_claims, 0);
    CHECK_EQ_INT(j->num_tenant_claims, 3); /* defaults */
    CHECK_EQ_STR(j->tenant_claims[0], "tid");
    CHECK_EQ_STR(j->tenant_claims[1], "azp");
    CHECK_EQ_STR(j->tenant_claims[2], "sub");
    CHECK_EQ_INT(j->clock_skew_s, 60);
    CHECK_EQ_INT(j->max_token_lifetime_s, 86400);
    CHECK_EQ_INT(j->jwks_refetch_cooldown_s, 30);
    CHECK_EQ_INT(j->num_algorithms, 3); /* a secret issuer defaults to HS* */
    CHECK_EQ_STR(j->algorithms[0], "HS256");
    CHECK_EQ_STR(j->algorithms[2], "HS512");

    j = &conf->auth.jwt[2];
    CHECK_EQ_STR(j->jwks_file, tmp("jwks.json"));
    CHECK(j->algorithms == NULL && j->num_algorithms == 0); /* every asymmetric algorithm */

    CHECK_EQ_INT(conf->auth.num_key_headers, 2);
    CHECK_EQ_STR(conf->auth.key_headers[0], "api-key");
    CHECK_EQ_STR(conf->auth.key_headers[1], "X-Key");
    CHECK_EQ_INT(conf->auth.num_static_keys, 1);
    CHECK_EQ_STR(conf->auth.static_keys[0].sha256, "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789");
    CHECK_EQ_STR(conf->auth.static_keys[0].tenant, "t1");

    CHECK_EQ_INT(conf->num_tenants, 3);
    CHECK_EQ_STR(conf->tenants[0].name, "default");
    CHECK_EQ_INT(conf->tenants[0].tpm, 10000);
    CHECK_EQ_INT(conf->tenants[0].rpm, 60);
    CHECK_EQ_INT(conf->tenants[0].tokens_per_day, -1);
    CHECK_EQ_INT(conf->tenants[0].tokens_per_month, -1);
    CHECK(conf->tenants[0].deployments == NULL);
    CHECK_EQ_STR(conf->tenants[1].name, "t1");
    CHECK_EQ_INT(conf->tenants[1].tpm, -1); /* named: -1 (unlimited) */
    CHECK_EQ_INT(conf->tenants[1].rpm, 60); /* left out: tenants.default's */
    CHECK_EQ_INT(conf->tenants[1].tokens_per_day, 0);
    CHECK_EQ_INT(conf->tenants[1].tokens_per_month, 5000000);
    CHECK_EQ_INT(conf->tenants[1].num_deployments, 2);
    CHECK_EQ_STR(conf->tenants[1].deployments[0], "gpt-4o");
    CHECK_EQ_STR(conf->tenants[1].deployments[1], "emb3");
    CHECK_EQ_STR(conf->tenants[2].name, "t2");
    CHECK_EQ_INT(conf->tenants[2].tpm, 10000); /* an empty entry is the default, not unlimited */
    CHECK_EQ_INT(conf->tenants[2].rpm, 60);
    CHECK_EQ_INT(conf->tenants[2].tokens_per_day, -1);
    CHECK(conf->tenants[2].deployments == NULL);

    CHECK_EQ_INT(conf->num_backends, 8);
    const struct aor_backend_conf *b = &conf->backends[0];
    CHECK_EQ_STR(b->name, "eastus");
    CHECK_EQ_STR(b->url, "https://contoso-eastus.openai.azure.com");
    CHECK_EQ_STR(b->region, "eastus");
    CHECK_EQ_INT(b->provider, AOR_PROVIDER_AZURE);
    CHECK_EQ_INT(b->priority, 1);
    CHECK_EQ_INT(b->weight, 2);
    CHECK_EQ_INT(b->tpm, 300000);
    CHECK_EQ_INT(b->num_deployments, 2);
    CHECK_EQ_STR(b->deployments[0].logical, "gpt-4o");
    CHECK_EQ_STR(b->deployments[0].upstream, "gpt-4o");
    CHECK_EQ_STR(b->deployments[1].logical, "text-embedding-3-small");
    CHECK_EQ_STR(b->deployments[1].upstream, "emb3");
    CHECK_EQ_INT(b->cred.type, AOR_CRED_API_KEY);
    CHECK_EQ_STR(b->cred.api_key, "eastus-api-key");
    CHECK_EQ_INT(b->line, 39);

    b = &conf->backends[1];
    CHECK_EQ_STR(b->name, "swedencentral");
    CHECK(b->region == NULL);
    CHECK_EQ_INT(b->priority, 2);
    CHECK_EQ_INT(b->weight, 1);
    CHECK_EQ_INT(b->tpm, 0);
    CHECK(b->deployments == NULL && b->num_deployments == 0);
    CHECK_EQ_INT(b->cred.type, AOR_CRED_MANAGED_IDENTITY);
    CHECK_EQ_STR(b->cred.client_id, "uami-client-id");
    CHECK_EQ_STR(b->cred.imds_endpoint, "http://169.254.169.254/metadata/identity/oauth2/token");
    CHECK_EQ_STR(b->cred.resource, "https://cognitiveservices.azure.com");
    CHECK(b->cred.api_key == NULL && b->cred.authority_host == NULL);

    b = &conf->backends[2];
    CHECK_EQ_INT(b->cred.type, AOR_CRED_WORKLOAD_IDENTITY);
    CHECK_EQ_STR(b->cred.tenant_id, "tenant-guid");
    CHECK_EQ_STR(b->cred.client_id, "app-id");
    CHECK_EQ_STR(b->cred.token_file, tmp("token"));
    CHECK_EQ_STR(b->cred.authority_host, "https://login.microsoftonline.com/");
    CHECK_EQ_STR(b->cred.resource, "https://cognitiveservices.azure.com");

    b = &conf->backends[3];
    CHECK_EQ_STR(b->name, "openai");
    CHECK_EQ_INT(b->provider, AOR_PROVIDER_OPENAI);
    CHECK_EQ_STR(b->url, "https://api.openai.com");
    CHECK_EQ_INT(b->priority, 3);
    CHECK_EQ_INT(b->cred.type, AOR_CRED_OPENAI_WIF);
    CHECK_EQ_STR(b->cred.identity_provider_id, "idp");
    CHECK_EQ_STR(b->cred.service_account_id, "sa");
    CHECK_EQ_STR(b->cred.subject_type, "managed_identity");
    CHECK_EQ_STR(b->cred.subject_resource, "api://app-client-id");
    CHECK_EQ_STR(b->cred.imds_endpoint, "http://169.254.169.254/metadata/identity/oauth2/token");
    CHECK(b->cred.client_id == NULL && b->cred.token_url == NULL);

    b = &conf->backends[4];
    CHECK_EQ_INT(b->cred.type, AOR_CRED_CLIENT_SECRET);
    CHECK_EQ_STR(b->cred.tenant_id, "contoso.onmicrosoft.com");
    CHECK_EQ_STR(b->cred.client_id, "sp-id");
    CHECK_EQ_STR(b->cred.secret, "sp-secret");
    CHECK_EQ_STR(b->cred.authority_host, "http://127.0.0.1:9002/");
    CHECK_EQ_STR(b->cred.resource, "https://example.test");

    b = &conf->backends[5];
    CHECK_EQ_INT(b->cred.type, AOR_CRED_OIDC_FEDERATION);
    CHECK_EQ_STR(b->cred.token_url, "http://127.0.0.1:9004/oauth/token");
    CHECK_EQ_STR(b->cred.client_id, "auth0-id");
    CHECK_EQ_STR(b->cred.client_secret, "fed-secret-value");
    CHECK_EQ_STR(b->cred.tenant_id, "tguid");
    CHECK_EQ_STR(b->cred.azure_client_id, "az-app");
    CHECK_EQ_STR(b->cred.audience, "api://AzureADTokenExchange");
    CHECK_EQ_STR(b->cred.authority_host, "https://login.microsoftonline.com/");

    b = &conf->backends[6];
    CHECK_EQ_STR(b->name, "mock");
    CHECK_EQ_INT(b->cred.type, AOR_CRED_NONE);

    b = &conf->backends[7];
    CHECK_EQ_STR(b->cred.api_key, "file-api-key"); /* trailing whitespace trimmed */

    CHECK(aor_config_find_backend(conf, "westus") == &conf->backends[2]);
    CHECK(aor_config_find_backend(conf, "nowhere") == NULL);
    CHECK(aor_config_find_backend(conf, NULL) == NULL);
    aor_config_release(conf);
}

static void test_defaults(void)
{
    struct aor_config *conf;

    unsetenv("AZURE_AUTHORITY_HOST");
    EXPECT_OK(conf, parse(LISTEN BACKEND));
    if (conf == NULL)
        return;
    CHECK_EQ_INT(conf->num_listeners, 1);
    CHECK_EQ_STR(conf->listeners[0].address, "127.0.0.1");
    CHECK_EQ_INT(conf->listeners[0].line, 2);
    CHECK_EQ_INT(conf->listeners[0].tls.enabled, 0);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    CHECK_EQ_INT(conf->threads, cores < 1 ? 1 : cores > 256 ? 256 : cores);
    CHECK(conf->redis.url == NULL && conf->redis.password == NULL);
    CHECK_EQ_STR(conf->redis.prefix, "aoai:");
    CHECK_EQ_INT(conf->redis.fail_closed, 0);
    CHECK_EQ_INT(conf->limits.max_body_bytes, 16777216);
    CHECK_EQ_INT(conf->limits.upstream_timeout_ms, 120000);
    CHECK_EQ_INT(conf->limits.connect_timeout_ms, 10000);
    CHECK_EQ_INT(conf->limits.max_attempts, 3);
    CHECK_EQ_INT(conf->limits.max_cooldown_ms, 300000);
    CHECK_EQ_INT(conf->limits.default_cooldown_ms, 10000);
    CHECK_EQ_INT(conf->limits.drain_timeout_ms, 30000);
    CHECK_EQ_INT(conf->circuit.failures, 5);
    CHECK_EQ_INT(conf->circuit.open_ms, 30000);
    CHECK_EQ_INT(conf->metrics.enabled, 0);
    CHECK_EQ_INT(conf->auth.mode, AOR_AUTH_NONE);
    CHECK_EQ_INT(conf->auth.num_jwt, 0);
    CHECK_EQ_INT(conf->auth.num_key_headers, 2);
    CHECK_EQ_STR(conf->auth.key_headers[0], "api-key");
    CHECK_EQ_STR(conf->auth.key_headers[1], "Ocp-Apim-Subscription-Key");
    CHECK_EQ_INT(conf->auth.num_static_keys, 0);
    CHECK_EQ_INT(conf->num_tenants, 0);
    CHECK_EQ_INT(conf->num_backends, 1);
    CHECK_EQ_STR(conf->backends[0].url, "http://127.0.0.1:9000");
    CHECK_EQ_INT(conf->backends[0].priority, 1);
    CHECK_EQ_INT(conf->backends[0].weight, 1);
    CHECK_EQ_INT(conf->backends[0].provider, AOR_PROVIDER_AZURE);
    CHECK_EQ_INT(conf->backends[0].cred.type, AOR_CRED_NONE);
    CHECK_EQ_INT(conf->backends[0].line, 4);
    aor_config_release(conf);

    /* threads: 0 is the same as absent; empty sections are the same as absent */
    EXPECT_OK(conf, parse(LISTEN BACKEND "threads: 0\nredis:\nlimits: {}\nauth:\n"));
    if (conf != NULL) {
        CHECK(conf->threads >= 1);
        CHECK(conf->redis.url == NULL);
        CHECK_EQ_INT(conf->auth.mode, AOR_AUTH_NONE);
    }
    aor_config_release(conf);

    /* the Entra authority comes from the environment when the file does not say */
    setenv("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.us", 1);
    setenv("AOR_TEST_SP_SECRET", "sp-secret", 1);
    EXPECT_OK(conf, parse(LISTEN "backends:\n  - { name: b1, url: \"http://h\", auth: { type: client_secret, tenant_id: t, "
                                 "client_id: c, secret_env: AOR_TEST_SP_SECRET } }\n"));
    if (conf != NULL)
        CHECK_EQ_STR(conf->backends[0].cred.authority_host, "https://login.microsoftonline.us/");
    aor_config_release(conf);
    setenv("AZURE_AUTHORITY_HOST", "login.example", 1);
    EXPECT_ONLY_PROBLEM(parse(LISTEN "backends:\n  - { name: b1, url: \"http://h\", auth: { type: client_secret, tenant_id: t, "
                                     "client_id: c, secret_env: AOR_TEST_SP_SECRET } }\n"),
                        "t.yaml:4: backends[0].auth.authority_host: AZURE_AUTHORITY_HOST must start with http:// or https://");
    unsetenv("AZURE_AUTHORITY_HOST");

    /* workload identity takes what the AKS webhook injects */
    write_file(tmp("wi-token"), "eyJ...");
    setenv("AZURE_TENANT_ID", "env-tenant", 1);
    setenv("AZURE_CLIENT_ID", "env-client", 1);
    setenv("AZURE_FEDERATED_TOKEN_FILE", tmp("wi-token"), 1);
    EXPECT_OK(conf, parse(LISTEN "backends:\n  - { name: b1, url: \"http://h\", auth: { type: workload_identity } }\n"));
    if (conf != NULL) {
        CHECK_EQ_STR(conf->backends[0].cred.tenant_id, "env-tenant");
        CHECK_EQ_STR(conf->backends[0].cred.client_id, "env-client");
        CHECK_EQ_STR(conf->backends[0].cred.token_file, tmp("wi-token"));
    }
    aor_config_release(conf);
    /* an unreadable token file is a warning (issue 9): the projected volume may come later; it is read at every refresh */
    setenv("AZURE_FEDERATED_TOKEN_FILE", tmp("no-such-token"), 1);
    conf = parse(LISTEN "backends:\n  - { name: b1, url: \"http://h\", auth: { type: workload_identity } }\n");
    CHECK(conf != NULL);
    CHECK(strstr(errs, "t.yaml:4: warning: backends[0].auth.token_file (AZURE_FEDERATED_TOKEN_FILE): cannot read \"") != NULL);
    CHECK(strstr(errs, "no-such-token\" now: No such file or directory (read again at every token refresh") != NULL);
    CHECK_EQ_INT(count_lines(errs), 1);
    if (conf != NULL)
        CHECK_EQ_STR(conf->backends[0].cred.token_file, tmp("no-such-token"));
    aor_config_release(conf);
    conf = parsef(LISTEN "backends:\n  - { name: b1, url: \"http://h\", auth: { type: workload_identity, token_file: %s } }\n",
                  tmpdir);
    CHECK(conf != NULL);
    CHECK(strstr(errs, "t.yaml:4: warning: backends[0].auth.token_file: \"") != NULL &&
          strstr(errs, "is not a regular file") != NULL);
    aor_config_release(conf);
    unsetenv("AZURE_TENANT_ID");
    unsetenv("AZURE_CLIENT_ID");
    unsetenv("AZURE_FEDERATED_TOKEN_FILE");
    EXPECT_PROBLEM(parse(LISTEN "backends:\n  - { name: b1, url: \"http://h\", auth: { type: workload_identity } }\n"),
                   "t.yaml:4: backends[0].auth.tenant_id: missing required key (and AZURE_TENANT_ID is not set)");
    CHECK(strstr(errs, "t.yaml:4: backends[0].auth.token_file: missing required key (and AZURE_FEDERATED_TOKEN_FILE is not "
                       "set)") != NULL);
    CHECK_EQ_INT(count_lines(errs), 3);
}

/* ---- validation: one rule each ------------------------------------------------------------------------------------- */

static void test_structure(void)
{
    EXPECT_ONLY_PROBLEM(parse("- a\n- b\n"), "t.yaml:1: the configuration: expected a mapping");
    EXPECT_ONLY_PROBLEM(parse("# nothing here\n"), "t.yaml:1: the configuration is empty");
    EXPECT_ONLY_PROBLEM(parse(""), "t.yaml:1: the configuration is empty");
    EXPECT_ONLY_PROBLEM(parse("# c\n" BACKEND), "t.yaml:2: listen: missing required key");
    EXPECT_ONLY_PROBLEM(parse(LISTEN), "t.yaml:1: backends: missing required key");
    EXPECT_ONLY_PROBLEM(parse("listen: []\n" BACKEND), "t.yaml:1: listen: must not be empty");
    EXPECT_ONLY_PROBLEM(parse("listen: { port: 8080 }\n" BACKEND), "t.yaml:1: listen: expected a list");
    EXPECT_ONLY_PROBLEM(parse(LISTEN "backends: []\n"), "t.yaml:3: backends: must not be empty");
    EXPECT_ONLY_PROBLEM(parse(LISTEN "backends:\n  - just-a-name\n"), "t.yaml:4: backends[0]: expected a mapping");

    /* YAML syntax, with the line of the problem */
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "limits:\n  max_attempts: 3\n max_body_bytes: 5\n"),
                        "t.yaml:7: YAML syntax error: did not find expected key");
    EXPECT_ONLY_PROBLEM(parse(LISTEN "backends: [ { name: b1 }\n"), "t.yaml:4: YAML syntax error:");
    EXPECT_ONLY_PROBLEM(parse("listen: \"\xff\xfe\"\n"), "t.yaml:1: YAML syntax error: invalid");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "---\nthreads: 1\n"), "t.yaml:5: only one YAML document is allowed");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "x: *nowhere\n"), "t.yaml:5: YAML syntax error: found undefined alias");

    /* keys: duplicates and merges are refused (unknown ones: test_unknown_keys) */
    EXPECT_ONLY_PROBLEM(parse(LISTEN "backends:\n  - name: b1\n    url: http://a\n    url: http://b\n"),
                        "t.yaml:6: backends[0].url: duplicate key");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "tenants:\n  t1: {}\n  t1: {}\n"), "t.yaml:7: tenants.t1: duplicate key");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "threads: 1\nthreads: 2\n"), "t.yaml:6: threads: duplicate key");
    /* the merge is refused rather than silently ignored; url is then (truly) missing too */
    EXPECT_PROBLEM(parse(LISTEN "x-base: &base { url: \"http://a\" }\nbackends:\n  - { <<: *base, name: b1 }\n"),
                   "t.yaml:5: backends[0]: merge keys (<<) are not supported\nt.yaml:5: backends[0].url: missing required key\n");
    CHECK_EQ_INT(count_lines(errs), 2);
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "limits: { [a]: 1 }\n"), "t.yaml:5: limits: mapping keys must be strings");
    struct aor_config *conf;
    EXPECT_PROBLEM(parse(LISTEN BACKEND "future_section: { anything: [1, 2] }\nlimits: { future_limit: 7 }\n"),
                   "t.yaml:5: future_section: unknown key \"future_section\" (expected listen, threads, redis, limits, circuit, "
                   "metrics, auth, tenants, backends or passthrough; x- keys are free)\n"
                   "t.yaml:6: limits.future_limit: unknown key \"future_limit\" (expected max_body_bytes,");
    CHECK_EQ_INT(count_lines(errs), 2);
    EXPECT_OK(conf, parse(LISTEN BACKEND "x-future-section: { anything: [1, 2] }\nlimits: { x-future-limit: 7 }\n"));
    aor_config_release(conf);

    /* types */
    EXPECT_ONLY_PROBLEM(parse(LISTEN "backends:\n  - { name: [b1], url: \"http://a\" }\n"),
                        "t.yaml:4: backends[0].name: expected a string");
    EXPECT_ONLY_PROBLEM(parse(LISTEN "backends:\n  - { name: b1, url: }\n"), "t.yaml:4: backends[0].url: must not be empty");
    EXPECT_ONLY_PROBLEM(parse(LISTEN "backends:\n  - { name: b1, url: \"\" }\n"), "t.yaml:4: backends[0].url: must not be empty");
    EXPECT_ONLY_PROBLEM(parse(LISTEN "backends:\n  - { name: b1, url: \"http://a\\0b\" }\n"),
                        "t.yaml:4: backends[0].url: must not contain NUL characters");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "limits: 5\n"), "t.yaml:5: limits: expected a mapping");
}

static void test_integers(void)
{
    static const char *const bad[] = {"0",
                                      "65536",
                                      "-1",
                                      "abc",
                                      "80.5",
                                      "0x50",
                                      "1e3",
                                      "1_000",
                                      "080",
                                      "+",
                                      "\"\"",
                                      "99999999999999999999",
                                      "-99999999999999999999",
                                      "[80]",
                                      "{}",
                                      "~"};
    char yaml[256], msg[128];
    struct aor_config *conf;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
        snprintf(yaml, sizeof(yaml), "listen:\n  - address: 127.0.0.1\n    port: %s\n" BACKEND, bad[i]);
        snprintf(msg, sizeof(msg), "t.yaml:3: listen[0].port: expected an integer between 1 and 65535\n");
        EXPECT_ONLY_PROBLEM(parse(yaml), msg);
    }
    /* quoted digits and an explicit sign are integers too */
    EXPECT_OK(conf, parse("listen:\n  - { port: \"8080\" }\n  - { port: +8081 }\n" BACKEND KEYAUTH));
    if (conf != NULL) {
        CHECK_EQ_INT(conf->listeners[0].port, 8080);
        CHECK_EQ_INT(conf->listeners[1].port, 8081);
    }
    aor_config_release(conf);
    /* bounds of int64 */
    EXPECT_OK(conf, parse(LISTEN BACKEND "tenants:\n  t: { tpm: 9223372036854775807 }\n"));
    if (conf != NULL)
        CHECK_EQ_INT(conf->tenants[0].tpm, INT64_MAX);
    aor_config_release(conf);
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "tenants:\n  t: { tpm: 9223372036854775808 }\n"),
                        "t.yaml:6: tenants.t.tpm: expected an integer >= -1 (value too large)");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "tenants:\n  t: { rpm: -2 }\n"),
                        "t.yaml:6: tenants.t.rpm: expected an integer >= -1\n");
}

/* tenants.<T>.default_max_tokens: 0..1000000, inherited from tenants.default like the limits */
static void test_default_max_tokens(void)
{
    struct aor_config *conf;

    EXPECT_OK(conf, parse(LISTEN BACKEND
                          "tenants:\n  default: { tpm: 1000, default_max_tokens: 800 }\n"
                          "  a: { rpm: 5 }\n  b: { default_max_tokens: 0 }\n  c: { tpm: 2000000, default_max_tokens: 1000000 }\n"));
    if (conf != NULL) {
        CHECK_EQ_INT(conf->tenants[0].default_max_tokens, 800);
        CHECK_EQ_INT(conf->tenants[1].default_max_tokens, 800); /* left out: tenants.default's */
        CHECK_EQ_INT(conf->tenants[1].named, 1 | 2 | 32);       /* its rpm, the default's tpm and default_max_tokens */
        CHECK_EQ_INT(conf->tenants[2].default_max_tokens, 0);   /* named: 0 (none) */
        CHECK_EQ_INT(conf->tenants[3].default_max_tokens, 1000000);
        CHECK_EQ_INT(aor_quota_default_max_tokens(conf, "a"), 800);
        CHECK_EQ_INT(aor_quota_default_max_tokens(conf, "nobody"), 800);
        CHECK_EQ_INT(aor_quota_default_max_tokens(conf, "b"), 0);
    }
    aor_config_release(conf);
    EXPECT_OK(conf, parse(LISTEN BACKEND "tenants:\n  a: { tpm: 5 }\n"));
    if (conf != NULL)
        CHECK_EQ_INT(conf->tenants[0].default_max_tokens, 0); /* no default anywhere: none */
    aor_config_release(conf);
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "tenants:\n  t: { default_max_tokens: 1000001 }\n"),
                        "t.yaml:6: tenants.t.default_max_tokens: expected an integer between 0 and 1000000\n");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "tenants:\n  t: { default_max_tokens: -1 }\n"),
                        "t.yaml:6: tenants.t.default_max_tokens: expected an integer between 0 and 1000000\n");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "tenants:\n  t: { default_max_tokens: 1e3 }\n"),
                        "t.yaml:6: tenants.t.default_max_tokens: expected an integer between 0 and 1000000\n");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "tenants:\n  default: { default_max_token: 800 }\n"),
                        "t.yaml:6: tenants.default.default_max_token: unknown key \"default_max_token\" (did you mean "
                        "\"default_max_tokens\"?)");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "tenants:\n  t: { max_tokens: 800 }\n"),
                        "t.yaml:6: tenants.t.max_tokens: unknown key \"max_tokens\" (expected tpm, rpm, tokens_per_day, "
                        "tokens_per_month, deployments or default_max_tokens; x- keys are free)");
}

static void test_listen(void)
{
    EXPECT_ONLY_PROBLEM(parse("listen:\n  - { address: localhost, port: 80 }\n" BACKEND),
                        "t.yaml:2: listen[0].address: expected an IPv4 or IPv6 address");
    EXPECT_ONLY_PROBLEM(parse("listen:\n  - { address: 127.0.0.1 }\n" BACKEND), "t.yaml:2: listen[0].port: missing required key");
    EXPECT_ONLY_PROBLEM(parse("listen:\n  - { port: 80 }\n  - { address: 0.0.0.0, port: 80 }\n" BACKEND KEYAUTH),
                        "t.yaml:3: listen[1]: duplicate address:port 0.0.0.0:80 (also listen[0])");
    EXPECT_ONLY_PROBLEM(parse("listen:\n  - { address: \"::\", port: 80 }\n  - { address: \"0::0\", port: 80 }\n" BACKEND KEYAUTH),
                        "t.yaml:3: listen[1]: duplicate address:port [0::0]:80 (also listen[0])");
    struct aor_config *conf;
    EXPECT_OK(conf, parse("listen:\n  - { port: 80 }\n  - { address: \"::\", port: 80 }\n  - { port: 81 }\n" BACKEND KEYAUTH));
    if (conf != NULL) /* the default address */
        CHECK_EQ_STR(conf->listeners[0].address, "0.0.0.0");
    aor_config_release(conf);

    write_file(tmp("cert.pem"), "cert");
    write_file(tmp("key.pem"), "key");
    write_file(tmp("ca.pem"), "ca");
    EXPECT_ONLY_PROBLEM(parsef("listen:\n  - port: 443\n    tls: { cert_file: %s }\n" BACKEND KEYAUTH, tmp("cert.pem")),
                        "t.yaml:3: listen[0].tls.key_file: missing required key");
    EXPECT_ONLY_PROBLEM(parsef("listen:\n  - port: 443\n    tls:\n      cert_file: %s\n      key_file: %s\n" BACKEND KEYAUTH,
                               tmp("no-such-cert.pem"), tmp("key.pem")),
                        "t.yaml:4: listen[0].tls.cert_file: cannot read \"");
    CHECK(strstr(errs, "no-such-cert.pem\": No such file or directory") != NULL);
    EXPECT_ONLY_PROBLEM(
        parsef("listen:\n  - port: 443\n    tls: { cert_file: %s, key_file: %s }\n" BACKEND KEYAUTH, tmpdir, tmp("key.pem")),
        "t.yaml:3: listen[0].tls.cert_file: \"");
    CHECK(strstr(errs, "\" is not a regular file") != NULL);
    EXPECT_ONLY_PROBLEM(
        parsef("listen:\n  - port: 443\n    tls: { cert_file: %s, key_file: %s, client_cert: required }\n" BACKEND KEYAUTH,
               tmp("cert.pem"), tmp("key.pem")),
        "t.yaml:3: listen[0].tls.client_ca_file: missing required key (client_cert: required needs it)");
    EXPECT_ONLY_PROBLEM(
        parsef("listen:\n  - port: 443\n    tls: { cert_file: %s, key_file: %s, client_ca_file: %s }\n" BACKEND KEYAUTH,
               tmp("cert.pem"), tmp("key.pem"), tmp("ca.pem")),
        "t.yaml:3: listen[0].tls.client_cert: missing required key");
    EXPECT_ONLY_PROBLEM(parsef("listen:\n  - port: 443\n    tls: { cert_file: %s, key_file: %s, client_ca_file: %s,\n"
                               "           client_cert: sometimes }\n" BACKEND KEYAUTH,
                               tmp("cert.pem"), tmp("key.pem"), tmp("ca.pem")),
                        "t.yaml:4: listen[0].tls.client_cert: expected none, optional or required");
    EXPECT_OK(
        conf,
        parsef(
            "listen:\n  - port: 443\n    tls: { cert_file: %s, key_file: %s, client_ca_file: %s, client_cert: required }\n" BACKEND
                KEYAUTH,
            tmp("cert.pem"), tmp("key.pem"), tmp("ca.pem")));
    if (conf != NULL)
        CHECK_EQ_INT(conf->listeners[0].tls.client_cert, AOR_CLIENT_CERT_REQUIRED);
    aor_config_release(conf);
}

static void test_sections(void)
{
    struct aor_config *conf;

    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "threads: 257\n"), "t.yaml:5: threads: expected an integer between 0 and 256");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "threads: -1\n"), "t.yaml:5: threads: expected an integer between 0 and 256");

    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "redis: { url: \"http://127.0.0.1:6379\" }\n"),
                        "t.yaml:5: redis.url: must start with redis://");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "redis: { prefix: x }\n"), "t.yaml:5: redis.url: missing required key");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "redis: { url: \"redis://h\", on_failure: maybe }\n"),
                        "t.yaml:5: redis.on_failure: expected open or closed");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "redis: { url: \"redis://user:hunter2@h:6379/0\" }\n"),
                        "t.yaml:5: redis.url: secrets must come from an environment variable (*_env) or a file (*_file)");
    CHECK(strstr(errs, "hunter2") == NULL);
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "redis: { url: \"redis://h\", password: hunter2 }\n"),
                        "t.yaml:5: redis.password: secrets must come from");
    CHECK(strstr(errs, "hunter2") == NULL);
    EXPECT_OK(conf, parse(LISTEN BACKEND "redis: { url: \"redis://user@h:6379/0?x=a:b\" }\n"));
    aor_config_release(conf);

    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "limits: { max_attempts: 0 }\n"),
                        "t.yaml:5: limits.max_attempts: expected an integer between 1 and 10");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "limits: { max_attempts: 11 }\n"),
                        "t.yaml:5: limits.max_attempts: expected an integer between 1 and 10");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "limits: { max_body_bytes: 0 }\n"),
                        "t.yaml:5: limits.max_body_bytes: expected an integer between 1 and 1073741824");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "limits:\n  upstream_timeout_ms: -5\n"),
                        "t.yaml:6: limits.upstream_timeout_ms: expected an integer between 1 and 86400000");
    EXPECT_OK(conf, parse(LISTEN BACKEND "limits: { upstream_timeout_ms: 5000, max_cooldown_ms: 1000 }\n"));
    if (conf != NULL) {
        CHECK_EQ_INT(conf->limits.connect_timeout_ms, 5000);
        CHECK_EQ_INT(conf->limits.default_cooldown_ms, 1000);
    }
    aor_config_release(conf);

    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "circuit: { failures: 0 }\n"),
                        "t.yaml:5: circuit.failures: expected an integer between 1");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "circuit: { open_ms: 0 }\n"),
                        "t.yaml:5: circuit.open_ms: expected an integer between 1");

    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "metrics: { address: 127.0.0.1 }\n"), "t.yaml:5: metrics.port: missing required key");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "metrics: { address: 127.0.0.1, port: 8080 }\n"),
                        "t.yaml:5: metrics: 127.0.0.1:8080 is already listen[0]");

    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "tenants:\n  \"a{b}\": { tpm: 1 }\n"),
                        "t.yaml:6: tenants.a{b}: tenant name must be 1 to 128 characters from A-Z a-z 0-9 . _ : @ -");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "tenants:\n  t1: { deployments: [] }\n"),
                        "t.yaml:6: tenants.t1.deployments: must not be empty");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "tenants:\n  t1: { deployments: [a, ../b] }\n"),
                        "t.yaml:6: tenants.t1.deployments[1]: must be 1 to 256 characters without /");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "tenants:\n  t1: 5\n"), "t.yaml:6: tenants.t1: expected a mapping");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "tenants: [a]\n"), "t.yaml:5: tenants: expected a mapping");
}

#define JWT_HEAD LISTEN BACKEND "auth:\n  mode: jwt\n  jwt:\n" /* lines 1..7; the first issuer is at line 8 */

static void test_auth(void)
{
    struct aor_config *conf;

    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "auth:\n  keys: {}\n"), "t.yaml:6: auth.mode: missing required key");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "auth: { mode: cookie }\n"),
                        "t.yaml:5: auth.mode: expected jwt, key, jwt_or_key, jwt_and_key or none");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "auth:\n  mode: jwt_and_key\n"),
                        "t.yaml:6: auth.jwt: mode jwt_and_key needs at least one issuer");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "auth:\n  mode: jwt\n  jwt: []\n"),
                        "t.yaml:7: auth.jwt: mode jwt needs at least one issuer");
    EXPECT_OK(conf, parse(LISTEN BACKEND "auth: { mode: key }\n"));
    if (conf != NULL)
        CHECK_EQ_INT(conf->auth.mode, AOR_AUTH_KEY);
    aor_config_release(conf);

    EXPECT_ONLY_PROBLEM(parse(JWT_HEAD "    - { jwks_uri: \"https://i/keys\", audiences: [a] }\n"),
                        "t.yaml:8: auth.jwt[0].issuer: missing required key");
    EXPECT_ONLY_PROBLEM(parse(JWT_HEAD "    - { issuer: i, audiences: [a] }\n"),
                        "t.yaml:8: auth.jwt[0]: needs exactly one of openid_config, jwks_uri, jwks_file or secret_env");
    EXPECT_ONLY_PROBLEM(
        parse(JWT_HEAD "    - { issuer: i, jwks_uri: \"https://i/k\", openid_config: \"https://i/o\", audiences: [a] }\n"),
        "t.yaml:8: auth.jwt[0]: needs exactly one of openid_config, jwks_uri, jwks_file or secret_env");
    EXPECT_ONLY_PROBLEM(parse(JWT_HEAD "    - { issuer: i, jwks_uri: \"ftp://i/k\", audiences: [a] }\n"),
                        "t.yaml:8: auth.jwt[0].jwks_uri: must start with http:// or https://");
    EXPECT_ONLY_PROBLEM(parse(JWT_HEAD "    - { issuer: i, jwks_uri: \"https://i/k\" }\n"),
                        "t.yaml:8: auth.jwt[0].audiences: missing required key");
    EXPECT_ONLY_PROBLEM(parse(JWT_HEAD "    - issuer: i\n      jwks_uri: \"https://i/k\"\n      audiences: []\n"),
                        "t.yaml:10: auth.jwt[0].audiences: must not be empty");
    EXPECT_ONLY_PROBLEM(
        parse(JWT_HEAD "    - { issuer: i, jwks_uri: \"https://i/k\", audiences: [a], algorithms: [RS256, none] }\n"),
        "t.yaml:8: auth.jwt[0].algorithms[1]: unknown algorithm");
    EXPECT_ONLY_PROBLEM(
        parse(JWT_HEAD "    - { issuer: i, jwks_uri: \"https://i/k\", audiences: [a], algorithms: [RS256, HS256] }\n"),
        "t.yaml:8: auth.jwt[0].algorithms[1]: HS256 needs a shared secret (secret_env)");
    EXPECT_ONLY_PROBLEM(parse(JWT_HEAD "    - { issuer: i, jwks_uri: \"https://i/k\", audiences: [a], algorithms: HS512 }\n"),
                        "t.yaml:8: auth.jwt[0].algorithms: HS512 needs a shared secret");
    setenv("AOR_TEST_HS_SECRET", "0123456789abcdef0123456789abcdef", 1);
    EXPECT_ONLY_PROBLEM(
        parse(JWT_HEAD "    - { issuer: i, secret_env: AOR_TEST_HS_SECRET, audiences: [a], algorithms: [HS256, ES256] }\n"),
        "t.yaml:8: auth.jwt[0].algorithms[1]: ES256 needs public keys");
    setenv("AOR_TEST_HS_SECRET", "short-secret-value", 1);
    EXPECT_ONLY_PROBLEM(parse(JWT_HEAD "    - { issuer: i, secret_env: AOR_TEST_HS_SECRET, audiences: [a] }\n"),
                        "t.yaml:8: auth.jwt[0].secret_env: HS secrets must be at least 32 bytes");
    CHECK(strstr(errs, "short-secret-value") == NULL);
    unsetenv("AOR_TEST_HS_SECRET");
    EXPECT_ONLY_PROBLEM(parse(JWT_HEAD "    - { issuer: i, secret_env: AOR_TEST_HS_SECRET, audiences: [a] }\n"),
                        "t.yaml:8: auth.jwt[0].secret_env: environment variable AOR_TEST_HS_SECRET is not set or empty");
    EXPECT_ONLY_PROBLEM(parsef(JWT_HEAD "    - { issuer: i, jwks_file: %s, audiences: [a] }\n", tmp("no-such-jwks.json")),
                        "t.yaml:8: auth.jwt[0].jwks_file: cannot read");
    EXPECT_ONLY_PROBLEM(parse(JWT_HEAD "    - issuer: i\n      jwks_uri: \"https://i/k\"\n      audiences: [a]\n"
                                       "      required_claims: { roles: { a: b } }\n"),
                        "t.yaml:11: auth.jwt[0].required_claims.roles: expected a list of strings");
    EXPECT_ONLY_PROBLEM(parse(JWT_HEAD "    - issuer: i\n      jwks_uri: \"https://i/k\"\n      audiences: [a]\n"
                                       "      required_claims: [roles]\n"),
                        "t.yaml:11: auth.jwt[0].required_claims: expected a mapping");
    EXPECT_ONLY_PROBLEM(parse(JWT_HEAD "    - { issuer: i, jwks_uri: \"https://i/k\", audiences: [a], clock_skew_s: 3601 }\n"),
                        "t.yaml:8: auth.jwt[0].clock_skew_s: expected an integer between 0 and 3600");
    EXPECT_ONLY_PROBLEM(parse(JWT_HEAD "    - { issuer: i, jwks_uri: \"https://i/k\", audiences: [a] }\n"
                                       "    - { issuer: i, jwks_uri: \"https://j/k\", audiences: [b] }\n"),
                        "t.yaml:9: auth.jwt[1].issuer: duplicate issuer \"i\" (also auth.jwt[0])");

    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "auth:\n  mode: key\n  keys: { headers: [\"api key\"] }\n"),
                        "t.yaml:7: auth.keys.headers[0]: must be an HTTP header name");
    EXPECT_ONLY_PROBLEM(
        parse(LISTEN BACKEND "auth:\n  mode: key\n  keys:\n    static:\n      - { sha256: sk-live-1234, tenant: t1 }\n"),
        "t.yaml:9: auth.keys.static[0].sha256: expected 64 hexadecimal characters");
    CHECK(strstr(errs, "sk-live-1234") == NULL);
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND
                              "auth:\n  mode: key\n  keys:\n    static:\n"
                              "      - { sha256: \"0000000000000000000000000000000000000000000000000000000000000000\" }\n"),
                        "t.yaml:9: auth.keys.static[0].tenant: missing required key");
    EXPECT_ONLY_PROBLEM(
        parse(LISTEN BACKEND
              "auth:\n  mode: key\n  keys:\n    static:\n"
              "      - { sha256: \"00000000000000000000000000000000000000000000000000000000000000aa\", tenant: a }\n"
              "      - { sha256: \"00000000000000000000000000000000000000000000000000000000000000AA\", tenant: b }\n"),
        "t.yaml:10: auth.keys.static[1].sha256: duplicate key (also auth.keys.static[0])");
}

#define B_HEAD LISTEN "backends:\n" /* the first backend is at line 4 */

static void test_backends(void)
{
    struct aor_config *conf;

    EXPECT_ONLY_PROBLEM(parse(B_HEAD "  - { url: \"http://a\" }\n"), "t.yaml:4: backends[0].name: missing required key");
    EXPECT_ONLY_PROBLEM(parse(B_HEAD "  - { name: \"east us\", url: \"http://a\" }\n"),
                        "t.yaml:4: backends[0].name: must be 1 to 64 characters from A-Z a-z 0-9 _ . -");
    EXPECT_ONLY_PROBLEM(
        parse(B_HEAD "  - { name: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa, url: \"http://a\" }\n"),
        "t.yaml:4: backends[0].name: must be 1 to 64 characters");
    EXPECT_ONLY_PROBLEM(parse(B_HEAD "  - { name: eastus, url: \"http://a\" }\n  - { name: eastus, url: \"http://b\" }\n"),
                        "t.yaml:5: backends[1].name: duplicate backend name \"eastus\" (also backends[0])");
    EXPECT_ONLY_PROBLEM(parse(B_HEAD "  - { name: b1 }\n"), "t.yaml:4: backends[0].url: missing required key");
    EXPECT_ONLY_PROBLEM(parse(B_HEAD "  - { name: b0, url: \"http://a\" }\n  - { name: b1, url: \"ftp://a\" }\n"),
                        "t.yaml:5: backends[1].url: must start with http:// or https://");
    EXPECT_ONLY_PROBLEM(parse(B_HEAD "  - { name: b1, url: \"https://\" }\n"), "t.yaml:4: backends[0].url: has no host");
    EXPECT_ONLY_PROBLEM(parse(B_HEAD "  - { name: b1, url: \"https://a b\" }\n"),
                        "t.yaml:4: backends[0].url: must not contain spaces or control characters");
    EXPECT_ONLY_PROBLEM(parse(B_HEAD "  - { name: b1, url: \"http://a\", provider: bedrock }\n"),
                        "t.yaml:4: backends[0].provider: expected azure or openai");
    EXPECT_ONLY_PROBLEM(parse(B_HEAD "  - { name: b1, url: \"http://a\", priority: -1 }\n"),
                        "t.yaml:4: backends[0].priority: expected an integer between 0 and 2147483647");
    EXPECT_ONLY_PROBLEM(parse(B_HEAD "  - { name: b1, url: \"http://a\", weight: 0 }\n"),
                        "t.yaml:4: backends[0].weight: expected an integer between 1 and 1000");
    EXPECT_ONLY_PROBLEM(parse(B_HEAD "  - { name: b1, url: \"http://a\", weight: 1001 }\n"),
                        "t.yaml:4: backends[0].weight: expected an integer between 1 and 1000");
    EXPECT_ONLY_PROBLEM(parse(B_HEAD "  - { name: b1, url: \"http://a\", tpm: -1 }\n"),
                        "t.yaml:4: backends[0].tpm: expected an integer between 0 and 1000000000000");
    EXPECT_ONLY_PROBLEM(parse(B_HEAD "  - { name: b1, url: \"http://a\", deployments: {} }\n"),
                        "t.yaml:4: backends[0].deployments: must not be empty");
    EXPECT_ONLY_PROBLEM(parse(B_HEAD "  - name: b1\n    url: \"http://a\"\n    deployments:\n      gpt-4o: \"x/../y\"\n"),
                        "t.yaml:7: backends[0].deployments.gpt-4o: must be 1 to 256 characters without /");
    EXPECT_ONLY_PROBLEM(parse(B_HEAD "  - name: b1\n    url: \"http://a\"\n    deployments:\n      \"..\": y\n"),
                        "t.yaml:7: backends[0].deployments...: deployment name must be");
    EXPECT_ONLY_PROBLEM(parse(B_HEAD "  - name: b1\n    url: \"http://a\"\n    deployments:\n      gpt-4o: [a]\n"),
                        "t.yaml:7: backends[0].deployments.gpt-4o: expected a string");
    EXPECT_ONLY_PROBLEM(parse(B_HEAD "  - { name: b1, url: \"http://a\", deployments: [gpt-4o] }\n"),
                        "t.yaml:4: backends[0].deployments: expected a mapping");

    /* aliases are fine: a deployments map shared by two backends */
    EXPECT_OK(conf, parse(B_HEAD "  - { name: b1, url: \"http://a\", deployments: &d { gpt-4o: g4 } }\n"
                                 "  - { name: b2, url: \"http://b\", deployments: *d }\n"));
    if (conf != NULL) {
        CHECK_EQ_STR(conf->backends[1].deployments[0].upstream, "g4");
        CHECK(conf->backends[1].deployments[0].upstream != conf->backends[0].deployments[0].upstream);
    }
    aor_config_release(conf);
}

#define AUTH_HEAD B_HEAD "  - name: b1\n    url: \"http://a\"\n    auth:\n" /* auth keys from line 7 */

static void test_backend_auth(void)
{
    struct aor_config *conf;

    EXPECT_ONLY_PROBLEM(parse(AUTH_HEAD "      client_id: x\n"), "t.yaml:7: backends[0].auth.type: missing required key");
    EXPECT_ONLY_PROBLEM(parse(AUTH_HEAD "      type: password\n"),
                        "t.yaml:7: backends[0].auth.type: expected api_key, managed_identity, workload_identity, client_secret, "
                        "oidc_federation or openai_wif");
    EXPECT_ONLY_PROBLEM(parse(AUTH_HEAD "      type: managed_identity\n      imds_endpoint: 169.254.169.254\n"),
                        "t.yaml:8: backends[0].auth.imds_endpoint: must start with http:// or https://");
    EXPECT_OK(conf, parse(AUTH_HEAD "      type: managed_identity\n      imds_endpoint: \"http://127.0.0.1:9999/token\"\n"));
    if (conf != NULL) {
        CHECK_EQ_STR(conf->backends[0].cred.imds_endpoint, "http://127.0.0.1:9999/token");
        CHECK(conf->backends[0].cred.client_id == NULL);
    }
    aor_config_release(conf);

    EXPECT_ONLY_PROBLEM(parse(AUTH_HEAD "      { type: client_secret, tenant_id: t, client_id: c }\n"),
                        "t.yaml:7: backends[0].auth: needs exactly one of secret_env or secret_file");
    EXPECT_ONLY_PROBLEM(parse(AUTH_HEAD "      { type: client_secret, tenant_id: \"t/../x\", client_id: c, secret_env: HOME }\n"),
                        "t.yaml:7: backends[0].auth.tenant_id: expected a tenant ID (GUID) or domain name");
    setenv("AOR_TEST_FED_SECRET", "fed", 1);
    EXPECT_ONLY_PROBLEM(parse(AUTH_HEAD "      { type: oidc_federation, client_id: c, client_secret_env: AOR_TEST_FED_SECRET,\n"
                                        "        tenant_id: t, azure_client_id: a }\n"),
                        "t.yaml:7: backends[0].auth.token_url: missing required key");
    EXPECT_ONLY_PROBLEM(parse(AUTH_HEAD "      { type: oidc_federation, token_url: \"https://idp/token\", client_id: c,\n"
                                        "        client_secret_env: AOR_TEST_FED_SECRET, tenant_id: t }\n"),
                        "t.yaml:7: backends[0].auth.azure_client_id: missing required key");
    EXPECT_ONLY_PROBLEM(parse(AUTH_HEAD "      { type: openai_wif, identity_provider_id: i, service_account_id: s }\n"),
                        "t.yaml:7: backends[0].auth.subject: missing required key");
    EXPECT_ONLY_PROBLEM(parse(AUTH_HEAD "      { type: openai_wif, identity_provider_id: i, service_account_id: s,\n"
                                        "        subject: { type: github, resource: r } }\n"),
                        "t.yaml:8: backends[0].auth.subject.type: expected managed_identity, workload_identity or file");
    EXPECT_ONLY_PROBLEM(
        parse(AUTH_HEAD "      { type: openai_wif, service_account_id: s, subject: { type: managed_identity, resource: r } }\n"),
        "t.yaml:7: backends[0].auth.identity_provider_id: missing required key");
}

/* ---- secrets -------------------------------------------------------------------------------------------------------- */

static void test_secrets(void)
{
    struct aor_config *conf;

    /* key_env */
    setenv("AOR_TEST_KEY", "k-123", 1);
    EXPECT_OK(conf, parse(AUTH_HEAD "      { type: api_key, key_env: AOR_TEST_KEY }\n"));
    if (conf != NULL)
        CHECK_EQ_STR(conf->backends[0].cred.api_key, "k-123");
    aor_config_release(conf);
    unsetenv("AOR_TEST_KEY");
    EXPECT_ONLY_PROBLEM(parse(AUTH_HEAD "      { type: api_key, key_env: AOR_TEST_KEY }\n"),
                        "t.yaml:7: backends[0].auth.key_env: environment variable AOR_TEST_KEY is not set or empty");
    setenv("AOR_TEST_KEY", "", 1);
    EXPECT_ONLY_PROBLEM(parse(AUTH_HEAD "      { type: api_key, key_env: AOR_TEST_KEY }\n"),
                        "t.yaml:7: backends[0].auth.key_env: environment variable AOR_TEST_KEY is not set or empty");
    setenv("AOR_TEST_KEY", "sk-top secret\r\nX-Injected: 1", 1);
    EXPECT_ONLY_PROBLEM(parse(AUTH_HEAD "      { type: api_key, key_env: AOR_TEST_KEY }\n"),
                        "t.yaml:7: backends[0].auth.key_env: the value of AOR_TEST_KEY contains spaces, control or non-ASCII");
    CHECK(strstr(errs, "top secret") == NULL && strstr(errs, "Injected") == NULL);

    /* key_file */
    write_file(tmp("key1"), "file-key-1\n");
    EXPECT_OK(conf, parsef(AUTH_HEAD "      { type: api_key, key_file: %s }\n", tmp("key1")));
    if (conf != NULL)
        CHECK_EQ_STR(conf->backends[0].cred.api_key, "file-key-1");
    aor_config_release(conf);
    write_file(tmp("key-empty"), " \n\t\n");
    EXPECT_ONLY_PROBLEM(parsef(AUTH_HEAD "      { type: api_key, key_file: %s }\n", tmp("key-empty")),
                        "t.yaml:7: backends[0].auth.key_file: \"");
    CHECK(strstr(errs, "key-empty\" is empty") != NULL);
    EXPECT_ONLY_PROBLEM(parsef(AUTH_HEAD "      { type: api_key, key_file: %s }\n", tmp("no-such-key")),
                        "t.yaml:7: backends[0].auth.key_file: cannot read \"");
    write_file(tmp("key-multi"), "secret-line-one\nsecret-line-two\n");
    EXPECT_ONLY_PROBLEM(parsef(AUTH_HEAD "      { type: api_key, key_file: %s }\n", tmp("key-multi")),
                        "t.yaml:7: backends[0].auth.key_file: the content of \"");
    CHECK(strstr(errs, "secret-line") == NULL);
    {
        /* at most 64 KiB */
        char *big = malloc(65 * 1024 + 1);
        memset(big, 'k', 65 * 1024);
        big[65 * 1024] = '\0';
        write_file(tmp("key-big"), big);
        free(big);
    }
    EXPECT_ONLY_PROBLEM(parsef(AUTH_HEAD "      { type: api_key, key_file: %s }\n", tmp("key-big")), "is larger than 65536 bytes");

    /* exactly one source */
    setenv("AOR_TEST_KEY", "k-123", 1);
    EXPECT_ONLY_PROBLEM(parsef(AUTH_HEAD "      { type: api_key, key_env: AOR_TEST_KEY, key_file: %s }\n", tmp("key1")),
                        "t.yaml:7: backends[0].auth: set only one of key_env and key_file");
    EXPECT_ONLY_PROBLEM(parse(AUTH_HEAD "      { type: api_key }\n"),
                        "t.yaml:7: backends[0].auth: needs exactly one of key_env or key_file");

    /* never inline, anywhere under backends[].auth, auth, redis; the value never printed */
    EXPECT_PROBLEM(parse(AUTH_HEAD "      type: api_key\n      key: sk-INLINE-VALUE\n"),
                   "t.yaml:8: backends[0].auth.key: secrets must come from an environment variable (*_env) or a file (*_file)");
    CHECK(strstr(errs, "sk-INLINE-VALUE") == NULL);
    EXPECT_ONLY_PROBLEM(parse(AUTH_HEAD "      type: managed_identity\n      client_secret: sk-INLINE-VALUE\n"),
                        "t.yaml:8: backends[0].auth.client_secret: secrets must come from");
    CHECK(strstr(errs, "sk-INLINE-VALUE") == NULL);
    EXPECT_ONLY_PROBLEM(parse(AUTH_HEAD "      type: openai_wif\n      identity_provider_id: i\n      service_account_id: s\n"
                                        "      subject: { type: managed_identity, resource: r, password: sk-INLINE-VALUE }\n"),
                        "t.yaml:10: backends[0].auth.subject.password: secrets must come from");
    CHECK(strstr(errs, "sk-INLINE-VALUE") == NULL);
    EXPECT_ONLY_PROBLEM(parse(JWT_HEAD "    - { issuer: i, jwks_uri: \"https://i/k\", audiences: [a], secret: sk-INLINE-VALUE }\n"),
                        "t.yaml:8: auth.jwt[0].secret: secrets must come from");
    CHECK(strstr(errs, "sk-INLINE-VALUE") == NULL);
    EXPECT_ONLY_PROBLEM(
        parse(JWT_HEAD "    - { issuer: i, jwks_uri: \"https://i/k\", audiences: [a], api_key: [sk-INLINE-VALUE] }\n"),
        "t.yaml:8: auth.jwt[0].api_key: secrets must come from");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND
                              "auth:\n  mode: key\n  keys:\n    static: [ { key: sk-INLINE-VALUE, sha256: "
                              "\"0000000000000000000000000000000000000000000000000000000000000000\", tenant: t } ]\n"),
                        "t.yaml:8: auth.keys.static[0].key: secrets must come from");
    CHECK(strstr(errs, "sk-INLINE-VALUE") == NULL);
    /* an empty value is not a secret, but still an unknown key for this type */
    EXPECT_ONLY_PROBLEM(
        parse(AUTH_HEAD "      type: managed_identity\n      secret:\n"),
        "t.yaml:8: backends[0].auth.secret: unknown key \"secret\" (expected type, client_id, imds_endpoint or resource;");

    /* secret_file for the other kinds; file content kept but trailing newline trimmed */
    write_file(tmp("sp"), "sp secret with spaces\n");
    EXPECT_OK(conf, parsef(AUTH_HEAD "      { type: client_secret, tenant_id: t, client_id: c, secret_file: %s }\n", tmp("sp")));
    if (conf != NULL)
        CHECK_EQ_STR(conf->backends[0].cred.secret, "sp secret with spaces");
    aor_config_release(conf);
    unsetenv("AOR_TEST_KEY");
}

/* ---- costs are bounded ---------------------------------------------------------------------------------------------- */

static void test_limits(void)
{
    char *yaml;
    size_t len;

    /* nesting */
    yaml = malloc(200);
    memset(yaml, 0, 200);
    strcpy(yaml, "x: ");
    for (len = 3; len < 3 + 70; ++len)
        yaml[len] = '[';
    EXPECT_ONLY_PROBLEM(parse(yaml), "t.yaml:1: YAML nesting deeper than 64 levels");
    free(yaml);

    /* a self-referencing alias (libyaml builds a cycle) */
    EXPECT_ONLY_PROBLEM(parse(LISTEN "backends: &a [ *a ]\n"), "t.yaml:3: alias *a is used inside its own anchor");

    /* "billion laughs" */
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
                                             "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                                             "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
                                             "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                                             "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
                                             "f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n"),
                        "t.yaml:10: YAML aliases expand to more than 1000000 nodes");

    /* anchors */
    {
        size_t cap = 300 * 16 + 64, off = 0;
        yaml = malloc(cap);
        off += (size_t)snprintf(yaml + off, cap - off, "x:\n");
        for (int i = 0; i < 300; ++i)
            off += (size_t)snprintf(yaml + off, cap - off, " - &a%d 1\n", i);
        EXPECT_ONLY_PROBLEM(parse(yaml), "t.yaml:258: more than 256 YAML anchors");
        free(yaml);
    }

    /* the document size: 1 MiB */
    len = 1024 * 1024 + 1;
    yaml = malloc(len + 1);
    memset(yaml, '#', len);
    yaml[len] = '\0';
    EXPECT_ONLY_PROBLEM(parse(yaml), "t.yaml:1: larger than 1048576 bytes");
    free(yaml);
}

static void test_all_problems(void)
{
    EXPECT_PROBLEM(parse("listen:\n"
                         "  - { address: 127.0.0.1, port: 0 }\n"
                         "backends:\n"
                         "  - { name: b1, url: \"ftp://a\" }\n"
                         "  - { name: b1, url: \"http://a\", weight: 0 }\n"),
                   "t.yaml:2: listen[0].port: expected an integer between 1 and 65535\n"
                   "t.yaml:4: backends[0].url: must start with http:// or https://\n"
                   "t.yaml:5: backends[1].weight: expected an integer between 1 and 1000\n"
                   "t.yaml:5: backends[1].name: duplicate backend name \"b1\" (also backends[0])\n");
    CHECK_EQ_INT(count_lines(errs), 4);

    EXPECT_PROBLEM(parse("listen:\n  - { address: 127.0.0.1, port: 99999 }\nthreads: many\nbackends:\n  - { name: \"b 1\", url: "
                         "\"http://a\" }\n"),
                   "t.yaml:2: listen[0].port");
    CHECK(strstr(errs, "t.yaml:3: threads: expected an integer between 0 and 256") != NULL);
    CHECK(strstr(errs, "t.yaml:5: backends[0].name: must be") != NULL);
    CHECK_EQ_INT(count_lines(errs), 3);

    /* NULL errs is fine */
    CHECK(aor_config_parse("t.yaml", "x", 1, NULL) == NULL);
}

/* ---- unknown keys (SPEC §3): an error with the nearest known name; x- keys free ------------------------------------ */

static void test_unknown_keys(void)
{
    struct aor_config *conf;

    /* the typos of issue 7, each at its own line */
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "authentication:\n  mode: key\n"),
                        "t.yaml:5: authentication: unknown key \"authentication\" (did you mean \"auth\"?)\n");
    EXPECT_ONLY_PROBLEM(
        parse(JWT_HEAD "    - issuer: i\n      jwks_uri: \"https://i/k\"\n      audiences: [a]\n"
                       "      requried_claims: { roles: [Gateway.Use] }\n"),
        "t.yaml:11: auth.jwt[0].requried_claims: unknown key \"requried_claims\" (did you mean \"required_claims\"?)\n");
    EXPECT_ONLY_PROBLEM(parse(JWT_HEAD "    - { issuer: i, jwks_uri: \"https://i/k\", audiences: [a], tenant_claim: azp }\n"),
                        "t.yaml:8: auth.jwt[0].tenant_claim: unknown key \"tenant_claim\" (did you mean \"tenant_claims\"?)\n");
    EXPECT_ONLY_PROBLEM(parse(LISTEN "backends:\n  - name: b1\n    url: \"http://127.0.0.1:9000\"\n    priorty: 2\n"),
                        "t.yaml:6: backends[0].priorty: unknown key \"priorty\" (did you mean \"priority\"?)\n");
    EXPECT_ONLY_PROBLEM(parse(LISTEN "backends:\n  - name: b1\n    url: \"http://127.0.0.1:9000\"\n    deployment: { a: b }\n"),
                        "t.yaml:6: backends[0].deployment: unknown key \"deployment\" (did you mean \"deployments\"?)\n");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "limits:\n  max_attemps: 5\n"),
                        "t.yaml:6: limits.max_attemps: unknown key \"max_attemps\" (did you mean \"max_attempts\"?)\n");
    /* case, one-letter slips, transpositions, a plural, an abbreviation */
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "Tenants: {}\n"),
                        "t.yaml:5: Tenants: unknown key \"Tenants\" (did you mean \"tenants\"?)");
    EXPECT_PROBLEM(
        parse("listeners:\n  - { address: 127.0.0.1, port: 8080 }\n" BACKEND),
        "t.yaml:1: listeners: unknown key \"listeners\" (did you mean \"listen\"?)\nt.yaml:1: listen: missing required key\n");
    CHECK_EQ_INT(count_lines(errs), 2);
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "tenants:\n  t1: { tmp: 5 }\n"),
                        "t.yaml:6: tenants.t1.tmp: unknown key \"tmp\" (did you mean \"tpm\"?)");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "circuit: { open_sm: 5 }\n"),
                        "t.yaml:5: circuit.open_sm: unknown key \"open_sm\" (did you mean \"open_ms\"?)");
    EXPECT_PROBLEM(parse(LISTEN BACKEND "metrics: { address: 127.0.0.1, prot: 9100 }\n"),
                   "t.yaml:5: metrics.prot: unknown key \"prot\" (did you mean \"port\"?)");
    /* not close to anything: the known names are listed */
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "circuit: { colour: blue }\n"),
                        "t.yaml:5: circuit.colour: unknown key \"colour\" (expected failures or open_ms; x- keys are free)\n");
    /* every mapping of the schema: listen, tls, redis, auth, auth.keys, static keys, backends[].auth per type, subject */
    EXPECT_ONLY_PROBLEM(parse("listen:\n  - { address: 127.0.0.1, port: 8080, adress: 0.0.0.0 }\n" BACKEND),
                        "t.yaml:2: listen[0].adress: unknown key \"adress\" (did you mean \"address\"?)");
    write_file(tmp("cert.pem"), "cert");
    write_file(tmp("key.pem"), "key");
    EXPECT_ONLY_PROBLEM(
        parsef("listen:\n  - { address: 127.0.0.1, port: 443, tls: { cert_file: %s, key_file: %s, client_certs: x } }\n" BACKEND,
               tmp("cert.pem"), tmp("key.pem")),
        "listen[0].tls.client_certs: unknown key \"client_certs\" (did you mean \"client_cert\"?)");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "redis: { url: \"redis://h\", on_failur: closed }\n"),
                        "t.yaml:5: redis.on_failur: unknown key \"on_failur\" (did you mean \"on_failure\"?)");
    EXPECT_ONLY_PROBLEM(
        parse(
            LISTEN BACKEND
            "auth: { mode: jwt_and_key, same_tenants: true, jwt: [ { issuer: i, jwks_uri: \"https://i/k\", audiences: [a] } ] }\n"),
        "t.yaml:5: auth.same_tenants: unknown key \"same_tenants\" (did you mean \"same_tenant\"?)");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "auth: { mode: key, keys: { header: [x-key] } }\n"),
                        "t.yaml:5: auth.keys.header: unknown key \"header\" (did you mean \"headers\"?)");
    EXPECT_PROBLEM(parse(LISTEN BACKEND
                         "auth: { mode: key, keys: { static: [ { sha256: "
                         "\"0000000000000000000000000000000000000000000000000000000000000000\", tennant: t } ] } }\n"),
                   "t.yaml:5: auth.keys.static[0].tennant: unknown key \"tennant\" (did you mean \"tenant\"?)");
    EXPECT_PROBLEM(parse(LISTEN "backends:\n  - name: b1\n    url: \"http://127.0.0.1:9000\"\n"
                                "    auth: { type: api_key, key_env: HOME, key_evn: X }\n"),
                   "t.yaml:6: backends[0].auth.key_evn: unknown key \"key_evn\" (did you mean \"key_env\"?)");
    /* a key of another credential type is unknown for this one */
    EXPECT_ONLY_PROBLEM(
        parse(LISTEN "backends:\n  - name: b1\n    url: \"http://127.0.0.1:9000\"\n"
                     "    auth: { type: managed_identity, tenant_id: t }\n"),
        "t.yaml:6: backends[0].auth.tenant_id: unknown key \"tenant_id\" (expected type, client_id, imds_endpoint or resource;");
    EXPECT_ONLY_PROBLEM(parse(LISTEN "backends:\n  - name: b1\n    provider: openai\n"
                                     "    auth: { type: openai_wif, identity_provider_id: i, service_account_id: s,\n"
                                     "            subject: { type: managed_identity, resource: r, resorce: q } }\n"),
                        "t.yaml:7: backends[0].auth.subject.resorce: unknown key \"resorce\" (did you mean \"resource\"?)");
    setenv("AOR_TEST_TOKEN_FILE", "/etc/hostname", 1);
    EXPECT_ONLY_PROBLEM(parse(LISTEN "backends:\n  - name: b1\n    provider: openai\n"
                                     "    auth: { type: openai_wif, identity_provider_id: i, service_account_id: s, imds_endpoint: "
                                     "\"http://127.0.0.1:1/t\",\n"
                                     "            subject: { type: workload_identity, resource: r }, tenant_id: t, client_id: c, "
                                     "token_file: /etc/hostname }\n"),
                        "t.yaml:6: backends[0].auth.imds_endpoint: unknown key \"imds_endpoint\" (expected type,");
    /* free-named maps: tenants, deployments, required_claims; their values' maps are checked */
    EXPECT_OK(conf,
              parse(LISTEN "backends:\n  - { name: b1, url: \"http://127.0.0.1:9000\", deployments: { anything: x, tpm: y } }\n"
                           "tenants:\n  whatever: { tpm: 1 }\n  priority: {}\n"));
    aor_config_release(conf);
    /* x- keys anywhere a known key may stand, with any value; inline secrets in them are still refused */
    EXPECT_OK(conf,
              parse(LISTEN "x-owner: team-gateway\nbackends:\n  - { name: b1, url: \"http://127.0.0.1:9000\", x-ticket: [1, 2] }\n"
                           "limits: { x-why: { a: b } }\ntenants:\n  t1: { x-contact: someone }\n"));
    aor_config_release(conf);
    EXPECT_ONLY_PROBLEM(parse(LISTEN "backends:\n  - name: b1\n    url: \"http://127.0.0.1:9000\"\n"
                                     "    auth: { type: managed_identity, x-old: { key: sk-INLINE-VALUE } }\n"),
                        "t.yaml:6: backends[0].auth.x-old.key: secrets must come from");
    CHECK(strstr(errs, "sk-INLINE-VALUE") == NULL);
    /* "x" alone, or "X-": not the escape */
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "x: 1\n"), "t.yaml:5: x: unknown key \"x\"");
    /* a hostile key: long, control characters, quotes — no suggestion, nothing raw echoed */
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "\"a\\tb\\\"c\": 1\n"), "t.yaml:5: a?b\"c: unknown key \"a?b?c\" (expected");
    {
        char yaml[4096], *p = yaml;
        p += sprintf(p, LISTEN BACKEND "? ");
        memset(p, 'k', 2000);
        strcpy(p + 2000, "\n: 1\n");
        EXPECT_ONLY_PROBLEM(parse(yaml), "...\" (expected listen");
    }
    /* rediss:// (TLS) is accepted, with an optional readable CA file */
    {
        EXPECT_OK(conf, parse(LISTEN BACKEND "redis: { url: \"rediss://h:6380/0\" }\n"));
        CHECK_EQ_STR(conf->redis.url, "rediss://h:6380/0");
        CHECK(conf->redis.ca_file == NULL);
        aor_config_release(conf);
        EXPECT_OK(conf, parse(LISTEN BACKEND "redis: { url: \"rediss://h:6380/0\", ca_file: /etc/hostname }\n"));
        CHECK_EQ_STR(conf->redis.ca_file, "/etc/hostname");
        aor_config_release(conf);
    }
    EXPECT_PROBLEM(parse(LISTEN BACKEND "redis: { url: \"rediss://h\", ca_file: /nonexistent/ca.pem }\n"), "redis.ca_file");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "redis: { url: \"redis:/h\" }\n"),
                        "t.yaml:5: redis.url: must start with redis:// or rediss:// (TLS) and name a host");
    EXPECT_PROBLEM(parse(LISTEN BACKEND "redis:\n  url: \"redis://h\"\n  auth: { type: managed_identity, objectid: o }\n"),
                   "t.yaml:7: redis.auth.objectid: unknown key \"objectid\" (did you mean \"object_id\"?)");
}

/* ---- redis.auth: keyless Entra ID auth to Azure Redis (SPEC §3) --------------------------------------------------------- */

static void test_redis_auth(void)
{
    struct aor_config *conf;

    /* managed identity: the backend fields, resource https://redis.azure.com, object_id */
    EXPECT_OK(conf, parse(LISTEN BACKEND "redis:\n  url: \"rediss://h:6380\"\n"
                                         "  auth: { type: managed_identity, client_id: c, object_id: 11111111-2222 }\n"));
    if (conf != NULL) {
        CHECK_EQ_INT(conf->redis.cred.type, AOR_CRED_MANAGED_IDENTITY);
        CHECK_EQ_STR(conf->redis.cred.client_id, "c");
        CHECK_EQ_STR(conf->redis.cred.resource, "https://redis.azure.com");
        CHECK_EQ_STR(conf->redis.cred.imds_endpoint, "http://169.254.169.254/metadata/identity/oauth2/token");
        CHECK_EQ_STR(conf->redis.object_id, "11111111-2222");
        CHECK(conf->redis.password == NULL);
        CHECK_EQ_INT(conf->backends[0].cred.type, AOR_CRED_NONE);
    }
    aor_config_release(conf);
    /* workload identity (file read at every refresh) and client_secret, with an overridden resource */
    write_file(tmp("redis-wi-token"), "eyJ...");
    EXPECT_OK(conf, parsef(LISTEN BACKEND "redis:\n  url: \"redis://h\"\n"
                                          "  auth: { type: workload_identity, tenant_id: t, client_id: c, token_file: %s,\n"
                                          "          authority_host: \"http://127.0.0.1:9/\", object_id: o }\n",
                           tmp("redis-wi-token")));
    if (conf != NULL) {
        CHECK_EQ_INT(conf->redis.cred.type, AOR_CRED_WORKLOAD_IDENTITY);
        CHECK_EQ_STR(conf->redis.cred.token_file, tmp("redis-wi-token"));
        CHECK_EQ_STR(conf->redis.cred.authority_host, "http://127.0.0.1:9/");
        CHECK_EQ_STR(conf->redis.cred.resource, "https://redis.azure.com");
    }
    aor_config_release(conf);
    setenv("AOR_TEST_REDIS_SP", "redis-sp-secret", 1);
    EXPECT_OK(conf,
              parse(LISTEN BACKEND "redis:\n  url: \"redis://h\"\n"
                                   "  auth: { type: client_secret, tenant_id: t, client_id: c, secret_env: AOR_TEST_REDIS_SP,\n"
                                   "          object_id: o, resource: \"https://redis.example\" }\n"));
    if (conf != NULL) {
        CHECK_EQ_INT(conf->redis.cred.type, AOR_CRED_CLIENT_SECRET);
        CHECK_EQ_STR(conf->redis.cred.secret, "redis-sp-secret");
        CHECK_EQ_STR(conf->redis.cred.resource, "https://redis.example");
        CHECK_EQ_STR(conf->redis.cred.authority_host, "https://login.microsoftonline.com/");
    }
    aor_config_release(conf);
    /* each field checked like a backend's; object_id required; keys of another type named */
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "redis:\n  url: \"redis://h\"\n  auth: { type: managed_identity }\n"),
                        "t.yaml:7: redis.auth.object_id: missing required key");
    EXPECT_ONLY_PROBLEM(
        parse(LISTEN BACKEND "redis:\n  url: \"redis://h\"\n  auth: { type: managed_identity, object_id: \"a b\" }\n"),
        "t.yaml:7: redis.auth.object_id: must be visible ASCII without spaces");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "redis:\n  url: \"redis://h\"\n  auth: { object_id: o }\n"),
                        "t.yaml:7: redis.auth.type: missing required key");
    EXPECT_PROBLEM(parse(LISTEN BACKEND "redis:\n  url: \"redis://h\"\n  auth: { type: api_key, object_id: o }\n"),
                   "t.yaml:7: redis.auth.type:");
    EXPECT_PROBLEM(
        parse(LISTEN BACKEND "redis:\n  url: \"redis://h\"\n  auth: { type: managed_identity, object_id: o, secret_env: X }\n"),
        "t.yaml:7: redis.auth.secret_env: unknown key");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "redis:\n  url: \"redis://h\"\n"
                                             "  auth: { type: client_secret, tenant_id: t, client_id: c, object_id: o }\n"),
                        "t.yaml:7: redis.auth: needs exactly one of secret_env or secret_file");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "redis:\n  url: \"redis://h\"\n"
                                             "  auth: { type: managed_identity, object_id: o, imds_endpoint: \"ftp://x\" }\n"),
                        "t.yaml:7: redis.auth.imds_endpoint: must start with http:// or https://");
    /* one AUTH: not with a password, nor a user in the URL */
    setenv("AOR_TEST_REDIS_PW", "pw", 1);
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "redis:\n  url: \"redis://h\"\n  password_env: AOR_TEST_REDIS_PW\n"
                                             "  auth: { type: managed_identity, object_id: o }\n"),
                        "t.yaml:8: redis.auth: Entra ID authentication and password_env/password_file are exclusive");
    EXPECT_ONLY_PROBLEM(
        parse(LISTEN BACKEND "redis:\n  url: \"redis://someone@h\"\n  auth: { type: managed_identity, object_id: o }\n"),
        "t.yaml:6: redis.url: no user name with redis.auth");
    /* workload identity's unreadable token file: a warning, as for a backend */
    conf = parsef(LISTEN BACKEND "redis:\n  url: \"redis://h\"\n"
                                 "  auth: { type: workload_identity, tenant_id: t, client_id: c, token_file: %s, object_id: o }\n",
                  tmp("no-such-redis-token"));
    CHECK(conf != NULL);
    CHECK(strstr(errs, "t.yaml:7: warning: redis.auth.token_file: cannot read") != NULL);
    CHECK_EQ_INT(count_lines(errs), 1);
    aor_config_release(conf);
    /* --check --no-secrets: the secret is not read */
    unsetenv("AOR_TEST_REDIS_SP");
    {
        const char *doc = LISTEN BACKEND
            "redis:\n  url: \"redis://h\"\n"
            "  auth: { type: client_secret, tenant_id: t, client_id: c, secret_env: AOR_TEST_REDIS_SP, object_id: o }\n";
        FILE *f;
        char path[160];
        snprintf(path, sizeof(path), "%s", tmp("redis-auth.yaml"));
        if ((f = fopen(path, "w")) == NULL)
            abort();
        fputs(doc, f);
        fclose(f);
        conf = aor_config_load_flags(path, NULL, AOR_CONFIG_NO_SECRETS);
        CHECK(conf != NULL);
        aor_config_release(conf);
        conf = aor_config_load(path, NULL);
        CHECK(conf == NULL);
    }
}

/* ---- who may omit auth: (SPEC §3) ----------------------------------------------------------------------------------- */

static void test_auth_omitted(void)
{
    struct aor_config *conf;

    /* loopback only: fine without auth */
    EXPECT_OK(conf, parse("listen:\n  - { address: 127.0.0.1, port: 1 }\n  - { address: 127.9.9.9, port: 2 }\n"
                          "  - { address: \"::1\", port: 3 }\n  - { address: \"::ffff:127.0.0.1\", port: 4 }\n" BACKEND
                          "metrics: { address: 127.0.0.1, port: 9100 }\n"));
    if (conf != NULL) {
        CHECK_EQ_INT(conf->auth.mode, AOR_AUTH_NONE);
        CHECK_EQ_INT(conf->auth.open_on_purpose, 0);
    }
    aor_config_release(conf);
    /* anything else: refused at the first listener that is not loopback */
    EXPECT_ONLY_PROBLEM(parse("listen:\n  - { address: 127.0.0.1, port: 1 }\n  - { port: 2 }\n" BACKEND),
                        "t.yaml:3: auth: missing: listen[1] (0.0.0.0:2) is not loopback; without auth: every client is served as "
                        "tenant \"default\" with the backends' credentials; add an auth: section, or auth: { mode: none } to run "
                        "open on purpose\n");
    EXPECT_ONLY_PROBLEM(parse("listen:\n  - { address: \"::\", port: 1 }\n" BACKEND),
                        "t.yaml:2: auth: missing: listen[0] ([::]:1)");
    EXPECT_ONLY_PROBLEM(parse("listen:\n  - { address: 10.0.0.5, port: 1 }\n" BACKEND),
                        "t.yaml:2: auth: missing: listen[0] (10.0.0.5:1)");
    EXPECT_ONLY_PROBLEM(parse("listen:\n  - { address: \"::ffff:10.0.0.5\", port: 1 }\n" BACKEND), "auth: missing: listen[0]");
    EXPECT_ONLY_PROBLEM(parse("listen:\n  - { address: 128.0.0.1, port: 1 }\n" BACKEND), "auth: missing: listen[0]");
    /* auth: with nothing under it is omitted too */
    EXPECT_ONLY_PROBLEM(parse("listen:\n  - { address: 0.0.0.0, port: 1 }\n" BACKEND "auth:\n"),
                        "t.yaml:2: auth: missing: listen[0]");
    EXPECT_ONLY_PROBLEM(parse(LISTEN BACKEND "metrics: { port: 9100 }\n"),
                        "t.yaml:5: auth: missing: metrics (0.0.0.0:9100) is not loopback");
    /* authentication: for auth: on 0.0.0.0 — both problems, as issue 7 met it */
    EXPECT_PROBLEM(parse("listen:\n  - { address: 0.0.0.0, port: 8080 }\n" BACKEND "authentication:\n  mode: key\n"),
                   "t.yaml:5: authentication: unknown key \"authentication\" (did you mean \"auth\"?)\n"
                   "t.yaml:2: auth: missing: listen[0] (0.0.0.0:8080) is not loopback");
    CHECK_EQ_INT(count_lines(errs), 2);
    /* a real auth section, or mode none on purpose (a warning, the config loads) */
    EXPECT_OK(conf, parse("listen:\n  - { address: 0.0.0.0, port: 1 }\n" BACKEND KEYAUTH));
    aor_config_release(conf);
    conf = parse("listen:\n  - { address: 0.0.0.0, port: 1 }\n" BACKEND "auth:\n  mode: none\n");
    CHECK(conf != NULL);
    CHECK_EQ_STR(errs, "t.yaml:6: warning: auth.mode: none: clients are not authenticated; every request is tenant \"default\" "
                       "and spends the backends' credentials\n");
    if (conf != NULL) {
        CHECK_EQ_INT(conf->auth.mode, AOR_AUTH_NONE);
        CHECK_EQ_INT(conf->auth.open_on_purpose, 1);
    }
    aor_config_release(conf);
}

/* ---- backend url: scheme://host[:port] only --------------------------------------------------------------------------- */

static void test_backend_url(void)
{
    struct aor_config *conf;

    EXPECT_ONLY_PROBLEM(parse(LISTEN "backends:\n  - name: b1\n    url: https://x.openai.azure.com/openai/deployments/gpt-4o\n"),
                        "t.yaml:5: backends[0].url: give only scheme://host[:port], without a path, query or fragment (the router "
                        "adds /openai/deployments/<name>/... and /openai/v1/... itself)\n");
    EXPECT_ONLY_PROBLEM(parse(LISTEN "backends:\n  - name: b1\n    provider: openai\n    url: https://api.openai.com/v1\n"),
                        "t.yaml:6: backends[0].url: give only scheme://host[:port], without a path, query or fragment (the router "
                        "adds /v1/... itself)\n");
    EXPECT_ONLY_PROBLEM(parse(LISTEN "backends:\n  - { name: b1, url: \"https://x.openai.azure.com?api-key=SECRET\" }\n"),
                        "t.yaml:4: backends[0].url: give only scheme://host[:port]");
    CHECK(strstr(errs, "SECRET") == NULL);
    EXPECT_ONLY_PROBLEM(parse(LISTEN "backends:\n  - { name: b1, url: \"https://x.openai.azure.com#f\" }\n"),
                        "t.yaml:4: backends[0].url: give only scheme://host[:port]");
    EXPECT_ONLY_PROBLEM(parse(LISTEN "backends:\n  - { name: b1, url: \"https://u:SECRET@x.openai.azure.com\" }\n"),
                        "t.yaml:4: backends[0].url: must not carry user:password@");
    CHECK(strstr(errs, "SECRET") == NULL);
    /* a trailing slash is only the root */
    EXPECT_OK(conf, parse(LISTEN "backends:\n  - { name: b1, url: \"https://x.openai.azure.com:8443//\" }\n"
                                 "  - { name: b2, url: \"http://[::1]:9000/\" }\n  - { name: b3, provider: openai }\n"));
    if (conf != NULL) {
        CHECK_EQ_STR(conf->backends[0].url, "https://x.openai.azure.com:8443");
        CHECK_EQ_STR(conf->backends[1].url, "http://[::1]:9000");
        CHECK_EQ_STR(conf->backends[2].url, "https://api.openai.com");
    }
    aor_config_release(conf);
}

/* ---- warnings: printed as "file:line: warning: ...", the config still loads ------------------------------------------ */

static void test_warnings(void)
{
    struct aor_config *conf;

    /* plain http:// off loopback for keys and tokens */
    conf = parse(JWT_HEAD "    - { issuer: i, jwks_uri: \"http://idp.example/keys\", audiences: [a] }\n"
                          "    - issuer: j\n      openid_config: \"HTTP://10.1.2.3:8080/.well-known/openid-configuration\"\n"
                          "      audiences: [a]\n");
    CHECK(conf != NULL);
    CHECK_EQ_STR(errs, "t.yaml:8: warning: auth.jwt[0].jwks_uri: plain http:// to a host that is not loopback: whoever is on the "
                       "path can read or alter the keys and tokens fetched there; use https://\n"
                       "t.yaml:10: warning: auth.jwt[1].openid_config: plain http:// to a host that is not loopback: whoever is "
                       "on the path can read or alter the keys and tokens fetched there; use https://\n");
    aor_config_release(conf);
    setenv("AOR_TEST_SP_SECRET", "sp-secret", 1);
    conf =
        parse(LISTEN "backends:\n"
                     "  - name: mi\n    url: \"http://127.0.0.1:9000\"\n    auth: { type: managed_identity, imds_endpoint: "
                     "\"http://imds.example/t\" }\n"
                     "  - name: sp\n    url: \"http://127.0.0.1:9000\"\n"
                     "    auth: { type: client_secret, tenant_id: t, client_id: c, secret_env: AOR_TEST_SP_SECRET, authority_host: "
                     "\"http://login.example\" }\n"
                     "  - name: fed\n    url: \"http://127.0.0.1:9000\"\n"
                     "    auth: { type: oidc_federation, token_url: \"http://user@[2001:db8::1]:80/oauth/token\", client_id: c,\n"
                     "            client_secret_env: AOR_TEST_SP_SECRET, tenant_id: t, azure_client_id: a }\n");
    CHECK(conf != NULL);
    CHECK(strstr(errs, "t.yaml:6: warning: backends[0].auth.imds_endpoint: plain http://") != NULL);
    CHECK(strstr(errs, "t.yaml:9: warning: backends[1].auth.authority_host: plain http://") != NULL);
    CHECK(strstr(errs, "t.yaml:12: warning: backends[2].auth.token_url: plain http://") != NULL);
    CHECK_EQ_INT(count_lines(errs), 3);
    aor_config_release(conf);
    /* no warning: https, loopback (IPv4, IPv6, localhost), IMDS's link-local address (the default too) */
    EXPECT_OK(conf, parse(JWT_HEAD "    - { issuer: i, jwks_uri: \"https://idp.example/keys\", audiences: [a] }\n"
                                   "    - { issuer: j, jwks_uri: \"http://127.0.0.1:9/keys\", audiences: [a] }\n"
                                   "    - { issuer: k, jwks_uri: \"http://[::1]:9/keys\", audiences: [a] }\n"
                                   "    - { issuer: l, openid_config: \"http://localhost:9/x\", audiences: [a] }\n"));
    aor_config_release(conf);
    EXPECT_OK(
        conf,
        parse(LISTEN
              "backends:\n  - name: mi\n    url: \"http://10.0.0.1:9000\"\n"
              "    auth: { type: managed_identity, imds_endpoint: \"http://169.254.169.254/metadata/identity/oauth2/token\" }\n"
              "  - name: mi2\n    url: \"http://10.0.0.2:9000\"\n    auth: { type: managed_identity }\n"));
    aor_config_release(conf);
    /* an Entra type on provider openai, openai_wif on an Azure backend: well-formed, but never a token (review: identity) */
    conf = parse(LISTEN "backends:\n  - name: oai\n    provider: openai\n    auth: { type: managed_identity }\n");
    CHECK(conf != NULL);
    CHECK_EQ_STR(errs, "t.yaml:6: warning: backends[0].auth.type: managed_identity on a backend with provider openai never gets "
                       "a token: the backend is always skipped (use openai_wif or api_key, or provider: azure)\n");
    aor_config_release(conf);

    /* warnings and problems together: both printed, the config refused */
    EXPECT_PROBLEM(parse(JWT_HEAD "    - { issuer: i, jwks_uri: \"http://idp.example/keys\", audiences: [a], clock_skew_s: -1 }\n"),
                   "t.yaml:8: auth.jwt[0].clock_skew_s: expected an integer");
    CHECK(strstr(errs, "t.yaml:8: warning: auth.jwt[0].jwks_uri: plain http://") != NULL);
}

/* ---- the API around the struct ---------------------------------------------------------------------------------------- */

static void test_load(void)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f;
    struct aor_config *conf;

    write_file(tmp("good.yaml"), LISTEN BACKEND);
    f = open_memstream(&text, &len);
    conf = aor_config_load(tmp("good.yaml"), f);
    fclose(f);
    CHECK(conf != NULL);
    CHECK_EQ_STR(text, "");
    if (conf != NULL)
        CHECK_EQ_STR(conf->path, tmp("good.yaml"));
    aor_config_release(conf);
    free(text);

    write_file(tmp("bad.yaml"), LISTEN "backends: []\n");
    f = open_memstream(&text, &len);
    conf = aor_config_load(tmp("bad.yaml"), f);
    fclose(f);
    CHECK(conf == NULL);
    {
        char want[256];
        snprintf(want, sizeof(want), "%s:3: backends: must not be empty\n", tmp("bad.yaml"));
        CHECK_EQ_STR(text, want);
    }
    free(text);

    f = open_memstream(&text, &len);
    conf = aor_config_load(tmp("missing.yaml"), f);
    fclose(f);
    CHECK(conf == NULL);
    CHECK(strstr(text, "missing.yaml:1: cannot read: No such file or directory\n") != NULL);
    free(text);

    f = open_memstream(&text, &len);
    conf = aor_config_load(tmpdir, f);
    fclose(f);
    CHECK(conf == NULL);
    CHECK(strstr(text, ":1: not a regular file\n") != NULL);
    free(text);

    {
        char *big = malloc(1024 * 1024 + 2);
        memset(big, '#', 1024 * 1024 + 1);
        big[1024 * 1024 + 1] = '\0';
        write_file(tmp("big.yaml"), big);
        free(big);
    }
    f = open_memstream(&text, &len);
    conf = aor_config_load(tmp("big.yaml"), f);
    fclose(f);
    CHECK(conf == NULL);
    CHECK(strstr(text, "big.yaml:1: larger than 1048576 bytes\n") != NULL);
    free(text);

    CHECK(aor_config_load(NULL, NULL) == NULL);
}

static void test_refcount(void)
{
    struct aor_config *conf = parse(LISTEN BACKEND);

    CHECK(conf != NULL);
    if (conf == NULL)
        return;
    CHECK_EQ_INT(conf->refcnt, 1);
    aor_config_retain(conf);
    aor_config_retain(conf);
    CHECK_EQ_INT(conf->refcnt, 3);
    aor_config_release(conf);
    aor_config_release(conf);
    CHECK_EQ_INT(conf->refcnt, 1);
    CHECK_EQ_STR(conf->backends[0].name, "b1"); /* still alive */
    aor_config_release(conf);                   /* freed: ASan reports any use after this or a leak */
    aor_config_release(NULL);
}

static void test_map_deployment(void)
{
    struct aor_config *conf;
    const char *path = "gpt-4o/chat/completions";

    EXPECT_OK(conf, parse(B_HEAD "  - { name: mapped, url: \"http://a\", deployments: { gpt-4o: g4o-east, gpt-4: g4 } }\n"
                                 "  - { name: any, url: \"http://b\" }\n"));
    if (conf == NULL)
        return;
    const struct aor_backend_conf *mapped = aor_config_find_backend(conf, "mapped"), *any = aor_config_find_backend(conf, "any");
    CHECK(mapped != NULL && any != NULL);

    /* a length-bounded slice of a longer string */
    CHECK_EQ_STR(aor_config_map_deployment(mapped, path, 6), "g4o-east");
    CHECK_EQ_STR(aor_config_map_deployment(mapped, path, 5), "g4");
    CHECK(aor_config_map_deployment(mapped, path, 4) == NULL);
    CHECK(aor_config_map_deployment(mapped, "GPT-4o", 6) == NULL); /* case-sensitive */
    CHECK(aor_config_map_deployment(mapped, "emb3", 4) == NULL);
    CHECK(aor_config_map_deployment(mapped, "", 0) == NULL);
    CHECK(aor_config_map_deployment(mapped, NULL, 3) == NULL);
    CHECK(aor_config_map_deployment(NULL, "gpt-4o", 6) == NULL);

    /* no map: the sentinel, and the caller uses its own slice */
    const char *up = aor_config_map_deployment(any, path, 6);
    CHECK(up == aor_config_deployment_unchanged);
    CHECK_EQ_STR(up, "");
    size_t up_len = up == aor_config_deployment_unchanged ? (up = path, 6) : strlen(up);
    CHECK(up == path && up_len == 6);
    CHECK(aor_config_map_deployment(any, "", 0) == NULL);
    aor_config_release(conf);
}

/* ---- tests/fixtures/config: each file is one problem, "# expect: <text> at line N" --------------------------------- */

static void check_fixture(const char *path)
{
    char *text = NULL, *out = NULL, *expect, *at, want[512];
    size_t len = 0, out_len = 0;
    long line;
    FILE *f = fopen(path, "r");

    if (f == NULL || getdelim(&text, &len, '\0', f) < 0) {
        fprintf(stderr, "%s: cannot read\n", path);
        CHECK(0);
        if (f != NULL)
            fclose(f);
        free(text);
        return;
    }
    fclose(f);
    if ((expect = strstr(text, "# expect: ")) == NULL || (at = strstr(expect, " at line ")) == NULL) {
        fprintf(stderr, "%s: no \"# expect: ... at line N\" comment\n", path);
        CHECK(0);
        free(text);
        return;
    }
    expect += strlen("# expect: ");
    *at = '\0';
    line = strtol(at + strlen(" at line "), NULL, 10);

    f = open_memstream(&out, &out_len);
    struct aor_config *conf = aor_config_load(path, f);
    fclose(f);
    snprintf(want, sizeof(want), "%s:%ld: ", path, line);
    int ok = conf == NULL && count_lines(out) == 1 && strncmp(out, want, strlen(want)) == 0 && strstr(out, expect) != NULL;
    if (!ok)
        fprintf(stderr, "%s: expected one problem \"%s...%s\", got:\n%s", path, want, expect, out);
    CHECK(ok);
    aor_config_release(conf);
    free(out);
    free(text);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void test_fixtures(void)
{
    DIR *d = opendir(FIXTURES_DIR);
    struct dirent *e;
    char *names[256];
    size_t n = 0;

    if (d == NULL) {
        fprintf(stderr, "%s: cannot open (run from the source root)\n", FIXTURES_DIR);
        CHECK(0);
        return;
    }
    unsetenv("AZURE_AUTHORITY_HOST");
    while ((e = readdir(d)) != NULL && n < 256) {
        size_t l = strlen(e->d_name);
        if (l > 5 && strcmp(e->d_name + l - 5, ".yaml") == 0 && asprintf(&names[n], "%s/%s", FIXTURES_DIR, e->d_name) > 0)
            ++n;
    }
    closedir(d);
    qsort(names, n, sizeof(names[0]), cmp_str);
    CHECK(n >= 30);
    for (size_t i = 0; i < n; ++i) {
        check_fixture(names[i]);
        free(names[i]);
    }
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

int main(void)
{
    strcpy(tmpdir, "/tmp/aor-test-config-XXXXXX");
    if (mkdtemp(tmpdir) == NULL)
        return 2;

    test_full_example();
    test_defaults();
    test_structure();
    test_integers();
    test_default_max_tokens();
    test_listen();
    test_sections();
    test_auth();
    test_backends();
    test_backend_auth();
    test_secrets();
    test_limits();
    test_unknown_keys();
    test_redis_auth();
    test_auth_omitted();
    test_backend_url();
    test_warnings();
    test_all_problems();
    test_load();
    test_refcount();
    test_map_deployment();
    test_fixtures();

    free(errs);
    nftw(tmpdir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
    return aor_test_done("test_config");
}
