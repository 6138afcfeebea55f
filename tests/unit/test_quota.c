/* unit tests for router/quota.c: hash values, fallback, UTC windows on a hand-moved clock, local counters */
#include <stdlib.h>
#include <string.h>
#include "config.h"
#include "quota.h"
#include "test.h"

#define S(x) x, strlen(x)

static void test_values(void)
{
    int64_t v = 7;

    CHECK(aor_quota_parse_value(S("-1"), &v) == 1 && v == -1);
    CHECK(aor_quota_parse_value(S("0"), &v) == 1 && v == 0);
    CHECK(aor_quota_parse_value(S("123456"), &v) == 1 && v == 123456);
    CHECK(aor_quota_parse_value(S("999999999999999"), &v) == 1 && v == 999999999999999LL);
    v = 7;
    CHECK(aor_quota_parse_value(S("1000000000000000000000000000000"), &v) == 0); /* 10^30 */
    CHECK(aor_quota_parse_value(S(""), &v) == 0);
    CHECK(aor_quota_parse_value(S("-2"), &v) == 0);
    CHECK(aor_quota_parse_value(S("abc"), &v) == 0);
    CHECK(aor_quota_parse_value(S(" 5"), &v) == 0);
    CHECK(aor_quota_parse_value(S("5e3"), &v) == 0);
    CHECK(aor_quota_parse_value(S("-0"), &v) == 0);
    CHECK_EQ_INT(v, 7);
}

static void test_resolve(void)
{
    struct aor_tenant_conf tenants[2] = {{.name = "default", .tpm = 1000, .rpm = 10, .tokens_per_day = -1, .tokens_per_month = -1},
                                         {.name = "t1", .tpm = 50, .rpm = -1, .tokens_per_day = 7, .tokens_per_month = -1}};
    struct aor_config conf;
    struct aor_quota q;
    struct aor_quota_fields f;

    memset(&conf, 0, sizeof(conf));
    conf.tenants = tenants;
    conf.num_tenants = 2;
    CHECK_EQ_INT(aor_quota_resolve(&conf, "t1", NULL, &q), 0);
    CHECK_EQ_INT(q.tpm, 50);
    CHECK_EQ_INT(q.day, 7);
    CHECK_EQ_INT(aor_quota_resolve(&conf, "other", NULL, &q), 0);
    CHECK_EQ_INT(q.tpm, 1000);
    CHECK_EQ_INT(q.rpm, 10);
    CHECK(q.all_deployments);

    memset(&f, 0, sizeof(f));
    f.tpm = "abc", f.tpm_len = 3;
    f.rpm = "-5", f.rpm_len = 2;
    f.day = "1000000000000000000000000000000", f.day_len = 31;
    f.month = "", f.month_len = 0;
    CHECK_EQ_INT(aor_quota_resolve(&conf, "other", &f, &q), 1 | 2 | 4 | 8);
    CHECK_EQ_INT(q.tpm, 1000); /* hostile values count as absent */
    CHECK_EQ_INT(q.rpm, 10);
    CHECK_EQ_INT(q.day, -1);

    memset(&f, 0, sizeof(f));
    f.tpm = "0", f.tpm_len = 1;
    aor_quota_resolve(&conf, "other", &f, &q);
    CHECK_EQ_INT(aor_quota_forbidden(&q, "gpt-4o"), AOR_LIMIT_DEPLOYMENT);
    f.tpm = "-1";
    f.tpm_len = 2;
    f.deployments = " gpt-4o , emb ", f.deployments_len = strlen(f.deployments);
    CHECK_EQ_INT(aor_quota_resolve(&conf, "other", &f, &q), 0);
    CHECK_EQ_INT(q.tpm, -1);
    CHECK(aor_quota_deployment_allowed(&q, "gpt-4o"));
    CHECK(aor_quota_deployment_allowed(&q, "emb"));
    CHECK(!aor_quota_deployment_allowed(&q, "gpt-4"));
    CHECK(!aor_quota_deployment_allowed(&q, "em"));
    CHECK(aor_quota_deployment_allowed(&q, ""));
    f.disabled = "1", f.disabled_len = 1;
    aor_quota_resolve(&conf, "other", &f, &q);
    CHECK_EQ_INT(aor_quota_forbidden(&q, "gpt-4o"), AOR_LIMIT_DEPLOYMENT);
    f.disabled = "maybe", f.disabled_len = 5;
    f.deployments = ",,", f.deployments_len = 2;
    CHECK_EQ_INT(aor_quota_resolve(&conf, "other", &f, &q), 16 | 32);
    CHECK(q.all_deployments);
    CHECK(q.disabled); /* a kill switch fails closed */
    f.deployments = NULL;
    {
        static const char *const on[] = {"1", "true", "TRUE", "yes", "On", "off", " 1", "2"};
        static const char *const off[] = {"0", "false", "No", "FALSE", ""};
        size_t i;
        for (i = 0; i != sizeof(on) / sizeof(on[0]); ++i) {
            f.disabled = on[i], f.disabled_len = strlen(on[i]);
            aor_quota_resolve(&conf, "other", &f, &q);
            CHECK(q.disabled);
        }
        for (i = 0; i != sizeof(off) / sizeof(off[0]); ++i) {
            f.disabled = off[i], f.disabled_len = strlen(off[i]);
            CHECK_EQ_INT(aor_quota_resolve(&conf, "other", &f, &q), 0);
            CHECK(!q.disabled);
        }
    }
}

static void test_windows(void)
{
    struct aor_quota_windows w;
    /* 2024-02-29T23:59:30.500Z */
    int64_t now = 1709251170500LL;

    aor_quota_windows(now, &w);
    CHECK_EQ_STR(w.minute, "202402292359");
    CHECK_EQ_STR(w.day, "20240229");
    CHECK_EQ_STR(w.month, "202402");
    CHECK_EQ_INT(aor_quota_retry_after(now, w.minute_end_ms), 30);
    CHECK_EQ_INT(aor_quota_retry_after(now, w.day_end_ms), 30);
    CHECK_EQ_INT(aor_quota_retry_after(now, w.month_end_ms), 30);
    CHECK_EQ_INT(aor_quota_retry_after(w.minute_end_ms, w.minute_end_ms), 1);
    CHECK_EQ_INT(aor_quota_retry_after(w.minute_end_ms - 1, w.minute_end_ms), 1);
    aor_quota_windows(now + 30000, &w); /* 2024-03-01T00:00:00.500Z */
    CHECK_EQ_STR(w.minute, "202403010000");
    CHECK_EQ_INT(w.month_end_ms, 1711929600000LL); /* 2024-04-01 */
    aor_quota_windows(1735689599000LL, &w);        /* 2024-12-31T23:59:59Z */
    CHECK_EQ_STR(w.minute, "202412312359");
    CHECK_EQ_INT(w.month_end_ms, 1735689600000LL);
}

static void test_local(void)
{
    struct aor_quota q = {.tpm = 100, .rpm = 3, .day = 250, .month = -1, .all_deployments = 1};
    struct aor_quota_counters c;
    struct aor_quota_windows w, w0;
    int64_t now = 1709208000000LL; /* 2024-02-29T12:00:00Z */
    int64_t rt = 0, rr = 0, ra = 0;

    memset(&c, 0, sizeof(c));
    aor_quota_windows(now, &w);
    w0 = w;
    CHECK_EQ_INT(aor_quota_local_reserve(&c, &q, &w, now, 60, &rt, &rr, &ra), AOR_LIMIT_NONE);
    CHECK_EQ_INT(rt, 40);
    CHECK_EQ_INT(rr, 2);
    CHECK_EQ_INT(aor_quota_local_reserve(&c, &q, &w, now + 1000, 60, &rt, &rr, &ra), AOR_LIMIT_TPM);
    CHECK_EQ_INT(ra, 59);
    aor_quota_local_settle(&c, &w0, 60, 20); /* the first used 20 */
    CHECK_EQ_INT(aor_quota_local_reserve(&c, &q, &w, now + 2000, 60, &rt, &rr, &ra), AOR_LIMIT_NONE);
    CHECK_EQ_INT(rt, 20);
    CHECK_EQ_INT(aor_quota_local_reserve(&c, &q, &w, now + 2000, 10, &rt, &rr, &ra), AOR_LIMIT_NONE);
    CHECK_EQ_INT(aor_quota_local_reserve(&c, &q, &w, now + 2000, 1, &rt, &rr, &ra), AOR_LIMIT_RPM);
    aor_quota_local_settle(&c, &w0, 10, -1); /* released: the request does not count */
    CHECK_EQ_INT(aor_quota_local_reserve(&c, &q, &w, now + 2000, 1, &rt, &rr, &ra), AOR_LIMIT_NONE);
    /* the next minute: tpm and rpm start over, the day does not */
    now += 60000;
    aor_quota_windows(now, &w);
    CHECK_EQ_INT(aor_quota_local_reserve(&c, &q, &w, now, 100, &rt, &rr, &ra), AOR_LIMIT_NONE);
    CHECK_EQ_INT(c.day_tokens, 20 + 60 + 1 + 100);
    aor_quota_local_settle(&c, &w0, 60, 60); /* an old minute's settle leaves the new minute alone */
    CHECK_EQ_INT(c.minute_tokens, 100);
    now += 60000;
    aor_quota_windows(now, &w);
    CHECK_EQ_INT(aor_quota_local_reserve(&c, &q, &w, now, 70, &rt, &rr, &ra), AOR_LIMIT_DAY);
}

/* the last fallback layer: the `default` tenant's hash fills what neither the tenant's hash nor the config names */
static void test_layer(void)
{
    struct aor_tenant_conf tenants[2] = {
        {.name = "default", .tpm = 1000, .rpm = -1, .tokens_per_day = -1, .tokens_per_month = -1, .set = 1, .named = 1},
        {.name = "t1", .tpm = 1000, .rpm = -1, .tokens_per_day = 7, .tokens_per_month = -1, .set = 4, .named = 1 | 4}};
    struct aor_config conf;
    struct aor_quota q;
    struct aor_quota_fields f;
    struct aor_quota_layer d;
    int64_t lim[4];

    memset(&conf, 0, sizeof(conf));
    conf.tenants = tenants;
    conf.num_tenants = 2;
    memset(&f, 0, sizeof(f));
    f.tpm = "5", f.tpm_len = 1;
    f.rpm = "7", f.rpm_len = 1;
    f.day = "x", f.day_len = 1; /* garbage counts as absent */
    f.month = "-1", f.month_len = 2;
    f.deployments = " a, b", f.deployments_len = 5;
    f.disabled = "1", f.disabled_len = 1; /* never inherited */
    CHECK_EQ_INT(aor_quota_layer_parse(&f, &d), 4);
    CHECK_EQ_INT(d.have, 1 | 2 | 8 | 16);
    CHECK_EQ_STR(d.deployments, "a,b");

    /* t1: tpm from the config's default, day its own: only rpm, month, deployments are open */
    aor_quota_resolve(&conf, "t1", NULL, &q);
    CHECK_EQ_INT(q.unset, 2 | 8 | 16);
    aor_quota_limits(&q, &d, lim);
    CHECK(lim[0] == 1000 && lim[1] == 7 && lim[2] == 7 && lim[3] == -1);
    aor_quota_fill(&q, &d);
    CHECK_EQ_INT(q.tpm, 1000);
    CHECK_EQ_INT(q.rpm, 7);
    CHECK_EQ_INT(q.day, 7);
    CHECK_EQ_INT(q.month, -1);
    CHECK_EQ_INT(q.disabled, 0);
    CHECK(!q.all_deployments && strcmp(q.deployments, "a,b") == 0);
    CHECK_EQ_INT(q.unset, 0);
    CHECK_EQ_INT(aor_quota_forbidden(&q, "c"), AOR_LIMIT_DEPLOYMENT);

    /* the tenant's own hash wins, field by field; an invalid field there falls through */
    memset(&f, 0, sizeof(f));
    f.rpm = "9", f.rpm_len = 1;
    f.month = "abc", f.month_len = 3;
    aor_quota_resolve(&conf, "t1", &f, &q);
    CHECK_EQ_INT(q.unset, 8 | 16);
    aor_quota_fill(&q, &d);
    CHECK_EQ_INT(q.rpm, 9);
    CHECK_EQ_INT(q.month, -1); /* the layer's -1 (unlimited) */

    /* an empty layer, none, or no config */
    memset(&d, 0, sizeof(d));
    aor_quota_resolve(&conf, "t1", NULL, &q);
    aor_quota_fill(&q, &d);
    aor_quota_fill(&q, NULL);
    CHECK_EQ_INT(q.rpm, -1);
    CHECK(q.all_deployments);
    CHECK_EQ_INT(aor_quota_layer_parse(NULL, &d), 0);
    CHECK_EQ_INT(d.have, 0);
    aor_quota_resolve(NULL, "x", NULL, &q);
    CHECK_EQ_INT(q.unset, 31);

    /* hostile values in the layer: each absent */
    memset(&f, 0, sizeof(f));
    f.tpm = "1e3", f.tpm_len = 3;
    f.rpm = "-2", f.rpm_len = 2;
    f.day = "1000000000000000000000000000000", f.day_len = 31;
    f.month = "", f.month_len = 0;
    f.deployments = ",,,", f.deployments_len = 3;
    CHECK_EQ_INT(aor_quota_layer_parse(&f, &d), 31);
    CHECK_EQ_INT(d.have, 0);
}

int main(void)
{
    test_layer();
    test_values();
    test_resolve();
    test_windows();
    test_local();
    return aor_test_done("test_quota");
}
