/* unit tests for router/routes.c: path classification and upstream paths */
#include <string.h>
#include "routes.h"
#include "test.h"

static struct aor_route parse(const char *path)
{
    struct aor_route r;
    aor_route_parse(path, strlen(path), &r);
    return r;
}

static void test_classify(void)
{
    struct aor_route r;

    CHECK_EQ_INT(parse("/healthz").kind, AOR_ROUTE_HEALTHZ);
    CHECK_EQ_INT(parse("/healthz?x=1").kind, AOR_ROUTE_HEALTHZ);
    CHECK_EQ_INT(parse("/readyz").kind, AOR_ROUTE_READYZ);
    CHECK_EQ_INT(parse("/metrics").kind, AOR_ROUTE_METRICS);
    CHECK_EQ_INT(parse("").kind, AOR_ROUTE_NOT_FOUND);
    CHECK_EQ_INT(parse("/").kind, AOR_ROUTE_NOT_FOUND);
    CHECK_EQ_INT(parse("/healthzz").kind, AOR_ROUTE_NOT_FOUND);
    CHECK_EQ_INT(parse("/openai/other").kind, AOR_ROUTE_NOT_FOUND);

    r = parse("/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21");
    CHECK_EQ_INT(r.kind, AOR_ROUTE_DEPLOYMENT);
    CHECK(r.deployment_len == 6 && memcmp(r.deployment, "gpt-4o", 6) == 0);
    CHECK(r.op_len == 16 && memcmp(r.op, "chat/completions", 16) == 0);
    CHECK(r.query_len == 22 && memcmp(r.query, "api-version=2024-10-21", 22) == 0);

    r = parse("/openai/v1/chat/completions");
    CHECK_EQ_INT(r.kind, AOR_ROUTE_V1);
    CHECK(r.op_len == 16 && memcmp(r.op, "chat/completions", 16) == 0);
    CHECK(r.query == NULL);
    r = parse("/v1/embeddings");
    CHECK_EQ_INT(r.kind, AOR_ROUTE_V1);
    CHECK(r.op_len == 10 && memcmp(r.op, "embeddings", 10) == 0);

    /* malformed data-plane paths */
    CHECK_EQ_INT(parse("/openai/deployments/").kind, AOR_ROUTE_BAD);
    CHECK_EQ_INT(parse("/openai/deployments/gpt-4o").kind, AOR_ROUTE_BAD);
    CHECK_EQ_INT(parse("/openai/deployments/gpt-4o/").kind, AOR_ROUTE_BAD);
    CHECK_EQ_INT(parse("/openai/deployments/../chat/completions").kind, AOR_ROUTE_BAD);
    CHECK_EQ_INT(parse("/openai/deployments/gpt-4o/../../x").kind, AOR_ROUTE_BAD);
    CHECK_EQ_INT(parse("/openai/deployments/gpt%2f4o/chat/completions").kind, AOR_ROUTE_BAD);
    CHECK_EQ_INT(parse("/openai/deployments/gpt-4o/chat//completions").kind, AOR_ROUTE_BAD);
    CHECK_EQ_INT(parse("/v1/").kind, AOR_ROUTE_BAD);
    CHECK_EQ_INT(parse("/v1/chat/completions/").kind, AOR_ROUTE_BAD);
    CHECK(!aor_route_valid_name("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 65));
    CHECK(aor_route_valid_name("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 64));
}

static void test_upstream_path(void)
{
    char buf[256];
    struct aor_route r;
    int n;

    r = parse("/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21&subscription-key=secret");
    n = aor_route_upstream_path(&r, AOR_PROVIDER_AZURE, "gpt4o-east", 10, buf, sizeof(buf));
    CHECK_EQ_STR(buf, "/openai/deployments/gpt4o-east/chat/completions?api-version=2024-10-21");
    CHECK_EQ_INT(n, (int)strlen(buf));
    r = parse("/openai/deployments/gpt-4o/chat/completions?subscription-key=secret&api-version=1");
    aor_route_upstream_path(&r, AOR_PROVIDER_AZURE, "x", 1, buf, sizeof(buf));
    CHECK_EQ_STR(buf, "/openai/deployments/x/chat/completions?api-version=1");
    r = parse("/openai/deployments/gpt-4o/embeddings?subscription-key");
    aor_route_upstream_path(&r, AOR_PROVIDER_AZURE, "x", 1, buf, sizeof(buf));
    CHECK_EQ_STR(buf, "/openai/deployments/x/embeddings");
    /* issue 7.9: every spelling and every occurrence of the credential is dropped */
    r = parse("/openai/deployments/gpt-4o/embeddings?Subscription-Key=a&api-version=1&subscription%2Dkey=b&SUBSCRIPTION%2dKEY=c"
              "&%73ubscription-key=d&subscription-key&x=1");
    aor_route_upstream_path(&r, AOR_PROVIDER_AZURE, "x", 1, buf, sizeof(buf));
    CHECK_EQ_STR(buf, "/openai/deployments/x/embeddings?api-version=1&x=1");
    CHECK(aor_route_param_named("Subscription-Key=1", 18, "subscription-key"));
    CHECK(aor_route_param_named("subscription%2dkey", 18, "subscription-key"));
    CHECK(!aor_route_param_named("subscription%2", 14, "subscription-key"));
    CHECK(!aor_route_param_named("subscription+key=1", 18, "subscription-key"));
    CHECK(!aor_route_param_named("subscription-keyx=1", 19, "subscription-key"));
    CHECK(!aor_route_param_named("subscription-ke", 15, "subscription-key"));
    /* the key's prefix is not a key */
    r = parse("/openai/deployments/gpt-4o/embeddings?subscription-keys=1");
    aor_route_upstream_path(&r, AOR_PROVIDER_AZURE, "x", 1, buf, sizeof(buf));
    CHECK_EQ_STR(buf, "/openai/deployments/x/embeddings?subscription-keys=1");
    r = parse("/v1/chat/completions");
    aor_route_upstream_path(&r, AOR_PROVIDER_AZURE, "x", 1, buf, sizeof(buf));
    CHECK_EQ_STR(buf, "/openai/v1/chat/completions");
    r = parse("/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21");
    aor_route_upstream_path(&r, AOR_PROVIDER_OPENAI, "gpt-4o", 6, buf, sizeof(buf));
    CHECK_EQ_STR(buf, "/v1/chat/completions");
    CHECK_EQ_INT(aor_route_upstream_path(&r, AOR_PROVIDER_AZURE, "x", 1, buf, 20), -1);
}

static void test_query_param(void)
{
    const char *q = "api-version=1&subscription-key=abc&x", *v;
    size_t vlen;

    CHECK(aor_route_query_param(q, strlen(q), "subscription-key", &v, &vlen) == 1 && vlen == 3 && memcmp(v, "abc", 3) == 0);
    CHECK(aor_route_query_param(q, strlen(q), "api-version", &v, &vlen) == 1 && vlen == 1 && v[0] == '1');
    CHECK(aor_route_query_param(q, strlen(q), "x", &v, &vlen) == 0);
    CHECK(aor_route_query_param(q, strlen(q), "key", &v, &vlen) == 0);
    CHECK(aor_route_query_param(NULL, 0, "key", &v, &vlen) == 0);
}

static enum aor_route_access authorize(const char *method, const char *path, const struct aor_config *conf, struct aor_route *r)
{
    aor_route_parse(path, strlen(path), r);
    return aor_route_authorize(r, method, strlen(method), conf);
}

/* issue 6 item 13: only inference operations by POST, and what the operator lists */
static void test_authorize(void)
{
    struct aor_config conf;
    struct aor_passthrough_conf pt[2] = {
        {"GET", "/openai/v1/models", 17, 0},
        {"DELETE", "/openai/v1/files/", 17, 1},
    };
    struct aor_route r;
    char buf[256];

    memset(&conf, 0, sizeof(conf));
    CHECK_EQ_INT(authorize("POST", "/openai/deployments/gpt-4o/chat/completions?api-version=1", &conf, &r), AOR_ACCESS_INFERENCE);
    CHECK_EQ_INT(authorize("POST", "/openai/deployments/d/completions", &conf, &r), AOR_ACCESS_INFERENCE);
    CHECK_EQ_INT(authorize("POST", "/openai/deployments/d/embeddings", &conf, &r), AOR_ACCESS_INFERENCE);
    CHECK_EQ_INT(authorize("POST", "/openai/deployments/d/audio/transcriptions", &conf, &r), AOR_ACCESS_INFERENCE);
    CHECK_EQ_INT(authorize("POST", "/openai/deployments/d/audio/translations", &conf, &r), AOR_ACCESS_INFERENCE);
    CHECK_EQ_INT(authorize("POST", "/openai/deployments/d/audio/speech", &conf, &r), AOR_ACCESS_INFERENCE);
    CHECK_EQ_INT(authorize("POST", "/openai/deployments/d/images/generations", &conf, &r), AOR_ACCESS_INFERENCE);
    CHECK_EQ_INT(authorize("POST", "/openai/deployments/d/images/edits", &conf, &r), AOR_ACCESS_INFERENCE);
    CHECK_EQ_INT(authorize("POST", "/openai/v1/responses", &conf, &r), AOR_ACCESS_INFERENCE);
    CHECK_EQ_INT(authorize("POST", "/v1/chat/completions", &conf, &r), AOR_ACCESS_INFERENCE);
    CHECK_EQ_INT(r.passthrough, 0);
    /* multipart operations only on the deployments path */
    CHECK_EQ_INT(authorize("POST", "/v1/audio/transcriptions", &conf, &r), AOR_ACCESS_NOT_FOUND);
    /* another method on an inference path */
    CHECK_EQ_INT(authorize("GET", "/openai/deployments/d/chat/completions", &conf, &r), AOR_ACCESS_METHOD_NOT_ALLOWED);
    CHECK_EQ_INT(authorize("HEAD", "/v1/embeddings", &conf, &r), AOR_ACCESS_METHOD_NOT_ALLOWED);
    CHECK_EQ_INT(authorize("post", "/v1/embeddings", &conf, &r), AOR_ACCESS_METHOD_NOT_ALLOWED);
    CHECK_EQ_INT(authorize("POSTX", "/v1/embeddings", &conf, &r), AOR_ACCESS_METHOD_NOT_ALLOWED);
    /* everything else */
    CHECK_EQ_INT(authorize("GET", "/v1/files", &conf, &r), AOR_ACCESS_NOT_FOUND);
    CHECK_EQ_INT(authorize("DELETE", "/openai/v1/files/file-1", &conf, &r), AOR_ACCESS_NOT_FOUND);
    CHECK_EQ_INT(authorize("POST", "/openai/v1/batches", &conf, &r), AOR_ACCESS_NOT_FOUND);
    CHECK_EQ_INT(authorize("GET", "/v1/responses/resp_1", &conf, &r), AOR_ACCESS_NOT_FOUND);
    CHECK_EQ_INT(authorize("POST", "/openai/deployments/d/chat/completions/x", &conf, &r), AOR_ACCESS_NOT_FOUND);
    /* the model list is the router's own (issue 11) */
    CHECK_EQ_INT(authorize("GET", "/openai/v1/models", &conf, &r), AOR_ACCESS_MODELS);
    CHECK_EQ_INT(r.models, 1);
    CHECK_EQ_INT(authorize("GET", "/v1/models?api-version=2024-10-21", &conf, &r), AOR_ACCESS_MODELS);
    CHECK_EQ_INT(authorize("GET", "/v1/models/gpt-4o", &conf, &r), AOR_ACCESS_MODELS);
    CHECK_EQ_INT(authorize("GET", "/v1/models/gpt-4o/x", &conf, &r), AOR_ACCESS_NOT_FOUND);
    CHECK_EQ_INT(authorize("GET", "/v1/models/", &conf, &r), AOR_ACCESS_NOT_FOUND);
    CHECK_EQ_INT(authorize("POST", "/v1/models", &conf, &r), AOR_ACCESS_NOT_FOUND);
    CHECK_EQ_INT(authorize("GET", "/openai/deployments/d/models", &conf, &r), AOR_ACCESS_NOT_FOUND);
    CHECK_EQ_INT(authorize("GET", "/openai/models?api-version=2024-10-21", &conf, &r), AOR_ACCESS_MODELS);
    CHECK(r.op_len == 6 && memcmp(r.op, "models", 6) == 0);
    CHECK_EQ_INT(authorize("GET", "/openai/models/gpt-4o", &conf, &r), AOR_ACCESS_MODELS);
    CHECK_EQ_INT(authorize("GET", "/openai/modelsx", &conf, &r), AOR_ACCESS_NOT_FOUND);
    CHECK_EQ_INT(authorize("GET", "/openai/models/a/b", &conf, &r), AOR_ACCESS_NOT_FOUND);
    CHECK_EQ_INT(authorize("DELETE", "/openai/models", &conf, &r), AOR_ACCESS_NOT_FOUND);
    CHECK_EQ_INT(authorize("GET", "/", &conf, &r), AOR_ACCESS_NOT_FOUND);

    conf.passthrough = pt;
    conf.num_passthrough = 2;
    CHECK_EQ_INT(authorize("GET", "/openai/v1/models?api-version=x", &conf, &r), AOR_ACCESS_PASSTHROUGH);
    CHECK_EQ_INT(r.kind, AOR_ROUTE_V1);
    CHECK_EQ_INT(r.passthrough, 1); /* listed: forwarded, not answered by the router */
    CHECK_EQ_INT(r.models, 0);
    CHECK_EQ_INT(authorize("GET", "/openai/v1/models/gpt-4o", &conf, &r), AOR_ACCESS_MODELS); /* exact, not a prefix */
    CHECK_EQ_INT(authorize("POST", "/openai/v1/models", &conf, &r), AOR_ACCESS_NOT_FOUND);    /* method is exact */
    CHECK_EQ_INT(authorize("DELETE", "/openai/v1/files/file-1", &conf, &r), AOR_ACCESS_PASSTHROUGH);
    CHECK_EQ_INT(authorize("DELETE", "/openai/v1/files/", &conf, &r), AOR_ACCESS_NOT_FOUND);
    /* a prefix cannot be climbed out of, nor escaped */
    CHECK_EQ_INT(authorize("DELETE", "/openai/v1/files/../deployments/d/x", &conf, &r), AOR_ACCESS_NOT_FOUND);
    CHECK_EQ_INT(authorize("DELETE", "/openai/v1/files/%2e%2e/x", &conf, &r), AOR_ACCESS_NOT_FOUND);
    CHECK_EQ_INT(authorize("DELETE", "/openai/v1/files/a//b", &conf, &r), AOR_ACCESS_NOT_FOUND);

    /* a listed path outside the data-plane prefixes goes up as is, credential query dropped */
    pt[0].path = "/openai/models";
    pt[0].path_len = 14;
    CHECK_EQ_INT(authorize("GET", "/openai/models?api-version=1&subscription-key=k", &conf, &r), AOR_ACCESS_PASSTHROUGH);
    CHECK_EQ_INT(r.kind, AOR_ROUTE_RAW);
    aor_route_upstream_path(&r, AOR_PROVIDER_AZURE, "", 0, buf, sizeof(buf));
    CHECK_EQ_STR(buf, "/openai/models?api-version=1");
}

int main(void)
{
    test_classify();
    test_upstream_path();
    test_query_param();
    test_authorize();
    return aor_test_done("test_routes");
}
