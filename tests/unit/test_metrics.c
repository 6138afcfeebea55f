/* unit tests for router/metrics.c: label values only from configuration or bounded sets (issue 6 item 4) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "backend.h"
#include "config.h"
#include "metrics.h"
#include "test.h"

#define LISTEN "listen:\n  - { address: 127.0.0.1, port: 8080 }\n"

static size_t count(const char *text, const char *needle)
{
    size_t n = 0;
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        ++n;
    return n;
}

int main(void)
{
    const char *yaml = LISTEN "backends:\n"
                              "  - { name: east, url: \"http://127.0.0.1:9000\", deployments: { gpt-4o: gpt4o-east, emb: emb3 } }\n"
                              "  - { name: any, url: \"http://127.0.0.1:9001\" }\n";
    struct aor_config *conf = aor_config_parse("t.yaml", yaml, strlen(yaml), stderr);
    char name[32], *text;
    size_t i, len;
    int64_t now = 1700000000000;
    struct aor_deployment_state *d;

    if (conf == NULL || aor_backend_attach(conf, now) != 0)
        return 1;

    /* tenants: "" for a refused request; the first AOR_METRICS_MAX_TENANTS keep their name */
    CHECK_EQ_STR(aor_metrics_tenant_label(NULL), "");
    CHECK_EQ_STR(aor_metrics_tenant_label(""), "");
    for (i = 0; i != AOR_METRICS_MAX_TENANTS; ++i) {
        snprintf(name, sizeof(name), "tenant-%zu", i);
        CHECK_EQ_STR(aor_metrics_tenant_label(name), name);
    }
    CHECK_EQ_STR(aor_metrics_tenant_label("one-too-many"), AOR_METRICS_OTHER);
    CHECK_EQ_STR(aor_metrics_tenant_label("tenant-7"), "tenant-7");

    /* deployments: configured logical names always; others only authenticated and served, bounded */
    CHECK_EQ_STR(aor_metrics_deployment_label(conf, "gpt-4o", 0), "gpt-4o");
    CHECK_EQ_STR(aor_metrics_deployment_label(conf, "emb", 1), "emb");
    CHECK_EQ_STR(aor_metrics_deployment_label(conf, "emb3", 0), ""); /* the upstream name is not a logical one */
    CHECK_EQ_STR(aor_metrics_deployment_label(conf, "junk123", 0), "");
    CHECK_EQ_STR(aor_metrics_deployment_label(conf, "", 1), "");
    for (i = 0; i != AOR_METRICS_MAX_DYNAMIC_DEPLOYMENTS; ++i) {
        snprintf(name, sizeof(name), "dyn-%zu", i);
        CHECK_EQ_STR(aor_metrics_deployment_label(conf, name, 1), name);
    }
    CHECK_EQ_STR(aor_metrics_deployment_label(conf, "dyn-late", 1), AOR_METRICS_OTHER);
    CHECK_EQ_STR(aor_metrics_deployment_label(conf, "dyn-3", 1), "dyn-3");

    /* the counters bound tenants themselves: the set is full, so 2000 new tenants make one series */
    for (i = 0; i != 2000; ++i) {
        snprintf(name, sizeof(name), "t%zu", i);
        aor_metrics_request(name, "gpt-4o", "east", 200);
    }
    aor_metrics_request("tenant-7", "gpt-4o", "east", 200);
    aor_metrics_request(NULL, "", "", 401);

    /* gauges per backend deployment: configured names, and the names a map-less backend tracks */
    aor_backend_route(&conf->backends[1], "free-name", 9, now, &d);
    d->cooldown_until_ms = now + 1000;
    if ((text = aor_metrics_render(conf, now, &len)) == NULL)
        return 1;
    CHECK(strstr(text, "aoai_router_backend_cooldown{backend=\"east\",deployment=\"gpt-4o\"} 0\n") != NULL);
    CHECK(strstr(text, "aoai_router_backend_cooldown{backend=\"east\",deployment=\"emb\"} 0\n") != NULL);
    CHECK(strstr(text, "aoai_router_backend_cooldown{backend=\"any\",deployment=\"free-name\"} 1\n") != NULL);
    CHECK(strstr(text, "aoai_router_backend_remaining_tokens{backend=\"east\",deployment=\"emb\"} -1\n") != NULL);
    CHECK(strstr(text, "aoai_router_backend_circuit_open{backend=\"any\"} 0\n") != NULL);
    CHECK_EQ_INT(count(text, "aoai_router_requests_total{"), 3);
    CHECK(strstr(text, "aoai_router_requests_total{tenant=\"other\",deployment=\"gpt-4o\",backend=\"east\",code=\"200\"} 2000\n") !=
          NULL);
    CHECK(strstr(text, "aoai_router_requests_total{tenant=\"tenant-7\",deployment=\"gpt-4o\",backend=\"east\",code=\"200\"} 1\n") !=
          NULL);
    CHECK(strstr(text, "aoai_router_requests_total{tenant=\"\",deployment=\"\",backend=\"\",code=\"401\"} 1\n") != NULL);
    free(text);
    aor_backend_deployment_release(d, now);

    aor_config_release(conf);
    aor_metrics_free();
    aor_backend_table_free();
    return aor_test_done("test_metrics");
}
