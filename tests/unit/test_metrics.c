/* unit tests for router/metrics.c: label values only from configuration or bounded sets (issue 6 item 4) */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "backend.h"
#include "config.h"
#include "metrics.h"
#include "quota.h"
#include "test.h"

#define LISTEN "listen:\n  - { address: 127.0.0.1, port: 8080 }\n"

static size_t count(const char *text, const char *needle)
{
    size_t n = 0;
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        ++n;
    return n;
}

/* the value of the sample line that starts with `prefix` (whole line up to the value), -1 when absent */
static double sample(const char *text, const char *prefix)
{
    const char *p = text;
    size_t len = strlen(prefix);

    while ((p = strstr(p, prefix)) != NULL) {
        if ((p == text || p[-1] == '\n') && p[len] == ' ')
            return strtod(p + len + 1, NULL);
        p += len;
    }
    return -1;
}

/* issue 11: per-thread shards. NT threads update the same series (and the same tenants) while
 * another thread scrapes; the scrape after they end must hold the exact sums */
#define NT 4
#define NU 20000
#define DUR_COUNT "aoai_router_request_duration_seconds_count{deployment=\"gpt-4o\",backend=\"east\"}"
#define DUR_INF "aoai_router_request_duration_seconds_bucket{deployment=\"gpt-4o\",backend=\"east\",le=\"+Inf\"}"

static const struct aor_config *shard_conf;
static int updaters_done, scrape_bad, scrapes;

static void *updater(void *arg)
{
    int idx = *(const int *)arg, i;
    char tenant[16], backend[16];

    snprintf(backend, sizeof(backend), "own-%d", idx);
    for (i = 0; i != NU; ++i) {
        snprintf(tenant, sizeof(tenant), "ct-%d", i % 3);
        aor_metrics_request(tenant, "gpt-4o", "east", i % 2 ? 200 : 429);
        aor_metrics_request_duration("gpt-4o", "east", 0.5); /* exact in binary: the sum is exact */
        aor_metrics_tokens(tenant, "gpt-4o", "east", 3, 2);
        aor_metrics_failover(backend, "status"); /* a series of this thread only */
    }
    return NULL;
}

/* scrapes while the updaters run: every histogram it sees is whole (its count is its +Inf bucket) */
static void *scraper(void *arg)
{
    (void)arg;
    while (!__atomic_load_n(&updaters_done, __ATOMIC_ACQUIRE)) {
        size_t len;
        char *text = aor_metrics_render(shard_conf, 1700000000000, &len);
        double c, inf;
        if (text == NULL) {
            ++scrape_bad;
            break;
        }
        c = sample(text, DUR_COUNT);
        inf = sample(text, DUR_INF);
        if (c != inf || c > (double)NT * NU)
            ++scrape_bad;
        free(text);
        ++scrapes;
    }
    return NULL;
}

static void test_shards(const struct aor_config *conf)
{
    pthread_t th[NT], sc;
    int idx[NT], i, k;
    char *text, line[256];
    size_t len, n;
    struct aor_metrics_tenant *t;

    aor_metrics_set_max_tenants(10);
    shard_conf = conf;
    CHECK_EQ_INT(pthread_create(&sc, NULL, scraper, NULL), 0);
    for (i = 0; i != NT; ++i) {
        idx[i] = i;
        CHECK_EQ_INT(pthread_create(&th[i], NULL, updater, &idx[i]), 0);
    }
    for (i = 0; i != NT; ++i)
        pthread_join(th[i], NULL);
    __atomic_store_n(&updaters_done, 1, __ATOMIC_RELEASE);
    pthread_join(sc, NULL);
    CHECK_EQ_INT(scrape_bad, 0);
    CHECK(scrapes >= 1);

    if ((text = aor_metrics_render(conf, 1700000000000, &len)) == NULL) {
        CHECK(0);
        return;
    }
    for (k = 0; k != 3; ++k) {
        /* i in [0, NU) with i % 3 == k, and of those the odd (200) and even (429) ones */
        long long all = 0, odd = 0;
        for (i = k; i < NU; i += 3)
            ++all, odd += i % 2;
        snprintf(line, sizeof(line),
                 "aoai_router_requests_total{tenant=\"ct-%d\",deployment=\"gpt-4o\",backend=\"east\",code=\"200\"}", k);
        CHECK_EQ_INT(sample(text, line), NT * odd);
        snprintf(line, sizeof(line),
                 "aoai_router_requests_total{tenant=\"ct-%d\",deployment=\"gpt-4o\",backend=\"east\",code=\"429\"}", k);
        CHECK_EQ_INT(sample(text, line), NT * (all - odd));
        snprintf(line, sizeof(line),
                 "aoai_router_tokens_total{tenant=\"ct-%d\",deployment=\"gpt-4o\",backend=\"east\",type=\"prompt\"}", k);
        CHECK_EQ_INT(sample(text, line), NT * all * 3);
        snprintf(line, sizeof(line),
                 "aoai_router_tokens_total{tenant=\"ct-%d\",deployment=\"gpt-4o\",backend=\"east\",type=\"completion\"}", k);
        CHECK_EQ_INT(sample(text, line), NT * all * 2);
    }
    /* one line per series, whatever the number of threads that counted it */
    CHECK_EQ_INT(count(text, "aoai_router_requests_total{"), 6);
    CHECK_EQ_INT(count(text, "aoai_router_tokens_total{"), 6);
    CHECK_EQ_INT(count(text, "aoai_router_request_duration_seconds_count{"), 1);
    CHECK_EQ_INT(sample(text, DUR_COUNT), NT * NU);
    CHECK_EQ_INT(sample(text, DUR_INF), NT * NU);
    CHECK(strstr(text, "aoai_router_request_duration_seconds_sum{deployment=\"gpt-4o\",backend=\"east\"} 40000.000000\n") != NULL);
    CHECK_EQ_INT(sample(text, "aoai_router_request_duration_seconds_bucket{deployment=\"gpt-4o\",backend=\"east\",le=\"0.5\"}"),
                 NT * NU);
    CHECK_EQ_INT(sample(text, "aoai_router_request_duration_seconds_bucket{deployment=\"gpt-4o\",backend=\"east\",le=\"0.25\"}"),
                 0);
    for (i = 0; i != NT; ++i) {
        snprintf(line, sizeof(line), "aoai_router_failovers_total{backend=\"own-%d\",reason=\"status\"}", i);
        CHECK_EQ_INT(sample(text, line), NU);
    }
    CHECK_EQ_INT(sample(text, "aoai_router_metrics_dropped_total"), 0);
    free(text);
    /* the tenants' token counters (status page), summed by every thread */
    t = aor_metrics_tenants(1700000000000, &n);
    CHECK_EQ_INT(n, 3);
    for (i = 0; i != (int)n; ++i) {
        long long all = 0;
        for (k = t[i].name[3] - '0'; k < NU; k += 3)
            ++all;
        CHECK_EQ_INT(t[i].tokens, NT * all * 5);
    }
    free(t);
    aor_metrics_free();
}

/* AOR_METRICS_MAX_SERIES bounds distinct series process-wide: two threads meeting the same series
 * count it once; the series past the bound are refused and counted as dropped */
#define HALF (AOR_METRICS_MAX_SERIES * 3 / 4)
static void *same_series(void *arg)
{
    char b[32];
    int i;

    (void)arg;
    for (i = 0; i != HALF; ++i) {
        snprintf(b, sizeof(b), "b%d", i);
        aor_metrics_failover(b, "x");
    }
    return NULL;
}

static void test_global_bound(const struct aor_config *conf)
{
    pthread_t th[2];
    char *text, b[32];
    size_t len;
    int i;

    for (i = 0; i != 2; ++i)
        CHECK_EQ_INT(pthread_create(&th[i], NULL, same_series, NULL), 0);
    for (i = 0; i != 2; ++i)
        pthread_join(th[i], NULL);
    for (i = 0; i != AOR_METRICS_MAX_SERIES / 2; ++i) { /* HALF + this = 1.25 x the bound */
        snprintf(b, sizeof(b), "c%d", i);
        aor_metrics_failover(b, "x");
    }
    if ((text = aor_metrics_render(conf, 1700000000000, &len)) == NULL) {
        CHECK(0);
        return;
    }
    CHECK_EQ_INT(count(text, "aoai_router_failovers_total{"), AOR_METRICS_MAX_SERIES);
    CHECK(strstr(text, "aoai_router_failovers_total{backend=\"b0\",reason=\"x\"} 2\n") != NULL);
    CHECK_EQ_INT(sample(text, "aoai_router_metrics_dropped_total"), HALF + AOR_METRICS_MAX_SERIES / 2 - AOR_METRICS_MAX_SERIES);
    free(text);
    aor_metrics_free();
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

    /* OpenTelemetry GenAI histograms: operations mapped to a fixed set; the semantic conventions'
     * bucket bounds; cumulative counts; whole bounds printed whole */
    CHECK_EQ_STR(aor_metrics_genai_operation("chat/completions", 16), "chat");
    CHECK_EQ_STR(aor_metrics_genai_operation("responses", 9), "chat");
    CHECK_EQ_STR(aor_metrics_genai_operation("completions", 11), "text_completion");
    CHECK_EQ_STR(aor_metrics_genai_operation("embeddings", 10), "embeddings");
    CHECK_EQ_STR(aor_metrics_genai_operation("chat/completionsX", 17), AOR_METRICS_OTHER);
    CHECK_EQ_STR(aor_metrics_genai_operation("images/generations", 18), AOR_METRICS_OTHER);
    CHECK_EQ_STR(aor_metrics_genai_operation(NULL, 0), AOR_METRICS_OTHER);
    aor_metrics_genai_tokens("chat", "gpt-4o", 3, 10);       /* input le=4, output le=16 */
    aor_metrics_genai_tokens("chat", "gpt-4o", 17, 1);       /* input le=64, output le=1 */
    aor_metrics_genai_tokens("chat", "gpt-4o", 20000000, 0); /* input le=67108864, output 0 → le=1 */
    aor_metrics_genai_tokens("embeddings", "emb", 5, 0);     /* input le=16, no output observation */
    aor_metrics_genai_ttft("chat", "gpt-4o", 0.003);         /* le=0.005 */
    aor_metrics_genai_ttft("chat", "gpt-4o", 0.3);           /* le=0.5 */
    aor_metrics_genai_ttft("chat", "gpt-4o", 11);            /* +Inf only */
    if ((text = aor_metrics_render(conf, now, &len)) == NULL)
        return 1;
#define TOK(type, le, n)                                                                                                           \
    CHECK(strstr(text, "gen_ai_client_token_usage_bucket{gen_ai_operation_name=\"chat\",gen_ai_request_model=\"gpt-4o\","          \
                       "gen_ai_token_type=\"" type "\",le=\"" le "\"} " n "\n") != NULL)
    TOK("input", "1", "0");
    TOK("input", "4", "1");
    TOK("input", "16", "1");
    TOK("input", "64", "2");
    TOK("input", "16777216", "2");
    TOK("input", "67108864", "3");
    TOK("input", "+Inf", "3");
    TOK("output", "1", "2");
    TOK("output", "4", "2");
    TOK("output", "16", "3");
    TOK("output", "+Inf", "3");
#undef TOK
    CHECK(strstr(text, "gen_ai_client_token_usage_sum{gen_ai_operation_name=\"chat\",gen_ai_request_model=\"gpt-4o\","
                       "gen_ai_token_type=\"input\"} 20000020.000000\n") != NULL);
    CHECK(strstr(text, "gen_ai_client_token_usage_count{gen_ai_operation_name=\"chat\",gen_ai_request_model=\"gpt-4o\","
                       "gen_ai_token_type=\"output\"} 3\n") != NULL);
    CHECK(strstr(text, "gen_ai_client_token_usage_count{gen_ai_operation_name=\"embeddings\",gen_ai_request_model=\"emb\","
                       "gen_ai_token_type=\"input\"} 1\n") != NULL);
    CHECK(strstr(text, "gen_ai_token_type=\"output\"") != NULL);
    CHECK(strstr(text, "gen_ai_request_model=\"emb\",gen_ai_token_type=\"output\"") == NULL);
    CHECK_EQ_INT(count(text, "gen_ai_client_token_usage_bucket{gen_ai_operation_name=\"chat\",gen_ai_request_model=\"gpt-4o\","
                             "gen_ai_token_type=\"input\""),
                 15); /* 14 bounds + Inf */
    CHECK(strstr(text, "# TYPE gen_ai_server_time_to_first_token_seconds histogram\n") != NULL);
#define TTFT(le, n)                                                                                                                \
    CHECK(                                                                                                                         \
        strstr(text,                                                                                                               \
               "gen_ai_server_time_to_first_token_seconds_bucket{gen_ai_operation_name=\"chat\",gen_ai_request_model=\"gpt-4o\","  \
               "le=\"" le "\"} " n "\n") != NULL)
    TTFT("0.001", "0");
    TTFT("0.005", "1");
    TTFT("0.25", "1");
    TTFT("0.5", "2");
    TTFT("10", "2");
    TTFT("+Inf", "3");
#undef TTFT
    CHECK_EQ_INT(count(text, "gen_ai_server_time_to_first_token_seconds_bucket{"), 17); /* 16 bounds + Inf */
    free(text);

    aor_metrics_free();

    /* metrics.max_tenants: a fresh set bounded at 2; raising it keeps the names seen (the table grows) */
    {
        struct aor_quota_windows w, later;
        struct aor_metrics_tenant *t;
        struct aor_metrics_tenant_ref *ref;
        const int64_t limit[4] = {1000, 10, -1, 0}, used[4] = {21, 1, 21, 21};
        const char *a;
        size_t n;

        aor_metrics_set_max_tenants(2);
        a = aor_metrics_tenant_label("a");
        CHECK_EQ_STR(a, "a");
        CHECK_EQ_STR(aor_metrics_tenant_label("b"), "b");
        CHECK_EQ_STR(aor_metrics_tenant_label("c"), AOR_METRICS_OTHER);
        aor_metrics_set_max_tenants(40);
        for (i = 0; i != 37; ++i) {
            snprintf(name, sizeof(name), "n%zu", i);
            CHECK_EQ_STR(aor_metrics_tenant_label(name), name);
        }
        CHECK(aor_metrics_tenant_label("a") == a); /* the interned string outlives the growth */
        CHECK_EQ_STR(aor_metrics_tenant_label("c"), "c");
        CHECK_EQ_STR(aor_metrics_tenant_label("d"), AOR_METRICS_OTHER);
        aor_metrics_set_max_tenants(1); /* shrinking: the names seen stay */
        CHECK_EQ_STR(aor_metrics_tenant_label("b"), "b");

        /* quota and usage: reserve 21, settle 7; the minute's figures end with the minute */
        aor_quota_windows(now, &w);
        ref = aor_metrics_tenant_quota("a", limit, used, &w);
        CHECK(ref != NULL);
        aor_metrics_tenant_settle(ref, &w, 21, 7);
        CHECK(aor_metrics_tenant_quota("other-not-seen", limit, used, &w) == NULL); /* beyond the bound: ignored */
        aor_metrics_tenant_settle(NULL, &w, 21, 7);                                 /* no-op */
        aor_metrics_quota_rejection("a", "rpm");
        aor_metrics_tokens("a", "gpt-4o", "east", 5, 2);
        t = aor_metrics_tenants(now, &n);
        CHECK_EQ_INT(n, 40);
        for (i = 0; i != n && strcmp(t[i].name, "a") != 0; ++i)
            ;
        CHECK(i != n);
        if (i != n) {
            CHECK_EQ_INT(t[i].have_quota, 1);
            CHECK_EQ_INT(t[i].used[0], 7);
            CHECK_EQ_INT(t[i].used[1], 1);
            CHECK_EQ_INT(t[i].used[2], 7);
            CHECK_EQ_INT(t[i].limit[2], -1);
            CHECK_EQ_INT(t[i].rejections[1], 1);
            CHECK_EQ_INT(t[i].tokens, 7);
        }
        free(t);
        aor_quota_windows(now + 60000, &later);
        aor_metrics_tenant_settle(ref, &w, 7, -1); /* a release in the old minute after it ended still applies to the day */
        t = aor_metrics_tenants(now + 60000, &n);
        for (i = 0; i != n && strcmp(t[i].name, "a") != 0; ++i)
            ;
        if (i != n) {
            CHECK_EQ_INT(t[i].used[0], 0); /* a new minute: nothing known in it */
            CHECK_EQ_INT(t[i].used[1], 0);
            CHECK_EQ_INT(later.day_id == w.day_id ? t[i].used[2] : 0, 0);
        }
        free(t);
        if ((text = aor_metrics_render(conf, now, &len)) == NULL)
            return 1;
        CHECK(strstr(text, "aoai_router_tenant_quota_limit{tenant=\"a\",limit=\"tpm\"} 1000\n") != NULL);
        CHECK(strstr(text, "aoai_router_tenant_quota_limit{tenant=\"a\",limit=\"month\"} 0\n") != NULL);
        CHECK(strstr(text, "aoai_router_tenant_quota_limit{tenant=\"a\",limit=\"day\"}") == NULL); /* unlimited */
        CHECK(strstr(text, "aoai_router_tenant_quota_used{tenant=\"a\",limit=\"rpm\"} 0\n") != NULL);
        CHECK_EQ_INT(count(text, "aoai_router_tenant_quota_used{"), 4); /* only "a" has a quota known */
        free(text);
        aor_metrics_free();
        aor_metrics_set_max_tenants(0); /* 0: every tenant is "other" */
        CHECK_EQ_STR(aor_metrics_tenant_label("a"), AOR_METRICS_OTHER);
        aor_metrics_free();
    }

    test_shards(conf);
    test_global_bound(conf);

    aor_config_release(conf);
    aor_backend_table_free();
    return aor_test_done("test_metrics");
}
