/* unit tests for router/backend.c: per-deployment state, bounded dynamic entries, reloads — on a hand-moved clock */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "backend.h"
#include "config.h"
#include "test.h"

#define LISTEN "listen:\n  - { address: 127.0.0.1, port: 8080 }\n"

static struct aor_config *parse(const char *yaml)
{
    struct aor_config *conf = aor_config_parse("t.yaml", yaml, strlen(yaml), stderr);
    if (conf == NULL)
        abort();
    return conf;
}

/* configured deployments: one state per name on the backend, shared by logical aliases; kept across reloads */
static void test_configured(void)
{
    struct aor_config *c1 = parse(LISTEN "backends:\n"
                                         "  - { name: east, url: \"http://127.0.0.1:9000\",\n"
                                         "      deployments: { gpt-4o: gpt4o-east, alias: gpt4o-east, emb: emb3 } }\n"
                                         "  - { name: west, url: \"http://127.0.0.1:9001\", deployments: { gpt-4o: gpt-4o } }\n");
    struct aor_config *c2, *c3;
    struct aor_deployment_state *d1, *d2, *d3;
    struct aor_backend_deployment_view views[8];
    int64_t now = 1700000000000;

    CHECK_EQ_INT(aor_backend_attach(c1, now), 0);
    CHECK_EQ_STR(aor_backend_route(&c1->backends[0], "gpt-4o", 6, now, &d1), "gpt4o-east");
    CHECK_EQ_STR(aor_backend_route(&c1->backends[0], "alias", 5, now, &d2), "gpt4o-east");
    CHECK(d1 != NULL && d1 == d2);
    CHECK_EQ_STR(aor_backend_route(&c1->backends[0], "emb", 3, now, &d3), "emb3");
    CHECK(d3 != d1);
    CHECK(aor_backend_route(&c1->backends[0], "nope", 4, now, &d3) == NULL);
    CHECK(aor_backend_route(&c1->backends[0], "gpt-4", 5, now, &d3) == NULL); /* a prefix is not a match */
    CHECK_EQ_INT(aor_backend_list_deployments(&c1->backends[0], views, 8), 3);
    CHECK_EQ_STR(views[1].label, "alias");
    CHECK_EQ_STR(views[1].name, "gpt4o-east");
    CHECK(views[0].state == views[1].state);

    /* a 429 and an open circuit survive a reload that leaves the backend as it was */
    d1->cooldown_until_ms = now + 20000;
    c1->backends[0].state->circuit_open_until_ms = now + 30000;
    c2 = parse(LISTEN "circuit: { open_ms: 1000 }\n"
                      "backends:\n"
                      "  - { name: east, url: \"http://127.0.0.1:9000\", priority: 3,\n"
                      "      deployments: { gpt-4o: gpt4o-east, alias: gpt4o-east, emb: emb3 } }\n");
    CHECK_EQ_INT(aor_backend_attach(c2, now + 1), 0);
    CHECK(c2->backends[0].state == c1->backends[0].state);
    CHECK(c2->backends[0].deployments[0].state == d1);
    CHECK_EQ_INT(d1->cooldown_until_ms, now + 20000);
    CHECK_EQ_INT(c2->backends[0].state->circuit_open_until_ms, now + 30000);
    /* a smaller max_cooldown_ms cuts it */
    c3 = parse(LISTEN "limits: { max_cooldown_ms: 5000 }\n"
                      "backends:\n"
                      "  - { name: east, url: \"http://127.0.0.1:9000\",\n"
                      "      deployments: { gpt-4o: gpt4o-east, alias: gpt4o-east, emb: emb3 } }\n");
    CHECK_EQ_INT(aor_backend_attach(c3, now + 2), 0);
    CHECK_EQ_INT(d1->cooldown_until_ms, now + 2 + 5000);
    aor_config_release(c3);
    /* another url under the same name: nothing learnt applies any more */
    c3 = parse(LISTEN "backends:\n"
                      "  - { name: east, url: \"http://127.0.0.1:9009\",\n"
                      "      deployments: { gpt-4o: gpt4o-east, alias: gpt4o-east, emb: emb3 } }\n");
    CHECK_EQ_INT(aor_backend_attach(c3, now + 3), 0);
    CHECK_EQ_INT(d1->cooldown_until_ms, 0);
    CHECK_EQ_INT(c3->backends[0].state->circuit_open_until_ms, 0);
    aor_config_release(c1);
    aor_config_release(c2);
    aor_config_release(c3);
}

/* a backend without a map: at most AOR_BACKEND_MAX_DYNAMIC names tracked, idle ones recycled, the rest share the overflow */
static void test_dynamic(void)
{
    struct aor_config *c = parse(LISTEN "backends:\n  - { name: any, url: \"http://127.0.0.1:9002\" }\n");
    struct aor_deployment_state *held[AOR_BACKEND_MAX_DYNAMIC], *d, *again, *over;
    struct aor_backend_deployment_view views[AOR_BACKEND_MAX_DYNAMIC + 1];
    int64_t now = 1700000000000;
    char name[32];
    size_t i, n;

    CHECK_EQ_INT(aor_backend_attach(c, now), 0);
    for (i = 0; i != AOR_BACKEND_MAX_DYNAMIC; ++i) {
        snprintf(name, sizeof(name), "dep%zu", i);
        CHECK(aor_backend_route(&c->backends[0], name, strlen(name), now, &held[i]) == aor_config_deployment_unchanged);
    }
    for (i = 1; i != AOR_BACKEND_MAX_DYNAMIC; ++i)
        CHECK(held[i] != held[i - 1]);
    /* the same name again: the same entry */
    CHECK(aor_backend_route(&c->backends[0], "dep7", 4, now, &again) == aor_config_deployment_unchanged);
    CHECK(again == held[7]);
    aor_backend_deployment_release(again, now);
    /* one more name while all are held: the overflow entry, listed as "*" */
    CHECK(aor_backend_route(&c->backends[0], "late", 4, now, &over) == aor_config_deployment_unchanged);
    for (i = 0; i != AOR_BACKEND_MAX_DYNAMIC; ++i)
        CHECK(over != held[i]);
    n = aor_backend_list_deployments(&c->backends[0], views, AOR_BACKEND_MAX_DYNAMIC + 1);
    CHECK_EQ_INT(n, AOR_BACKEND_MAX_DYNAMIC + 1);
    CHECK_EQ_STR(views[n - 1].name, AOR_BACKEND_OVERFLOW_NAME);
    aor_backend_deployment_release(over, now);
    /* released but used within the minute, or cooling down: not recycled */
    for (i = 0; i != AOR_BACKEND_MAX_DYNAMIC; ++i)
        aor_backend_deployment_release(held[i], now);
    held[3]->cooldown_until_ms = now + 120000;
    CHECK(aor_backend_route(&c->backends[0], "fresh", 5, now + 59999, &d) == aor_config_deployment_unchanged);
    CHECK(d == over);
    /* a minute idle: the least recently used idle entry takes the new name (not the cooling one) */
    held[0]->sent_minute = 12345;
    CHECK(aor_backend_route(&c->backends[0], "fresh", 5, now + 60000, &d) == aor_config_deployment_unchanged);
    CHECK(d != over && d != held[3]);
    CHECK_EQ_INT(d->sent_minute, 0); /* starts afresh */
    n = aor_backend_list_deployments(&c->backends[0], views, AOR_BACKEND_MAX_DYNAMIC + 1);
    CHECK_EQ_INT(n, AOR_BACKEND_MAX_DYNAMIC + 1);
    for (i = 0; i != n && strcmp(views[i].name, "fresh") != 0; ++i)
        ;
    CHECK(i != n && views[i].state == d);
    CHECK(aor_backend_view_current(&views[i]));
    aor_backend_deployment_release(d, now + 60000);
    /* recycled for yet another name: a view taken before no longer applies */
    held[3]->cooldown_until_ms = 0;
    for (size_t k = 0; k != AOR_BACKEND_MAX_DYNAMIC; ++k) {
        struct aor_deployment_state *x;
        snprintf(name, sizeof(name), "next%zu", k);
        aor_backend_route(&c->backends[0], name, strlen(name), now + 200000, &x);
    }
    CHECK(!aor_backend_view_current(&views[i]));
    aor_config_release(c);
}

int main(void)
{
    test_configured();
    test_dynamic();
    aor_backend_table_free();
    return aor_test_done("test_backend");
}
