/* unit tests for router/balancer.c: choice, cooldown, circuit, headroom, retry-after — on a hand-moved clock */
#include <string.h>
#include "balancer.h"
#include "test.h"

static struct aor_balancer_policy pol = {3, 30000};

static void setup(struct aor_backend_state *st, struct aor_balancer_candidate *c, size_t n)
{
    size_t i;
    for (i = 0; i != n; ++i) {
        aor_balancer_state_init(&st[i]);
        memset(&c[i], 0, sizeof(c[i]));
        c[i].state = &st[i];
        c[i].priority = 1;
        c[i].weight = 1;
    }
}

static void test_priority_and_skip(void)
{
    struct aor_backend_state st[3];
    struct aor_balancer_candidate c[3];
    int64_t now = 1000000, earliest;

    setup(st, c, 3);
    c[0].priority = 2;
    c[1].priority = 1;
    c[2].priority = 3;
    CHECK_EQ_INT(aor_balancer_pick(c, 3, now, 0, &earliest), 1);
    CHECK_EQ_INT(aor_balancer_pick(c, 3, now, 0xffffffff, &earliest), 1);
    /* 429 on the primary: cooldown; the next priority serves */
    aor_balancer_record(&st[1], &pol, AOR_OUTCOME_THROTTLED, 5000, now);
    CHECK_EQ_INT(aor_balancer_pick(c, 3, now, 0, &earliest), 0);
    CHECK_EQ_INT(earliest, now + 5000);
    /* tried candidates are excluded */
    c[0].tried = 1;
    CHECK_EQ_INT(aor_balancer_pick(c, 3, now, 0, &earliest), 2);
    c[2].tried = 1;
    CHECK_EQ_INT(aor_balancer_pick(c, 3, now, 0, &earliest), -1);
    CHECK_EQ_INT(earliest, now + 5000);
    /* cooldown ends: recovery */
    c[0].tried = c[2].tried = 0;
    CHECK_EQ_INT(aor_balancer_pick(c, 3, now + 4999, 0, &earliest), 0);
    CHECK_EQ_INT(aor_balancer_pick(c, 3, now + 5000, 0, &earliest), 1);
    CHECK(!aor_balancer_cooling(&st[1], now + 5000));
}

static void test_all_cooling(void)
{
    struct aor_backend_state st[2];
    struct aor_balancer_candidate c[2];
    int64_t now = 5000000, earliest;

    setup(st, c, 2);
    aor_balancer_record(&st[0], &pol, AOR_OUTCOME_THROTTLED, 8000, now);
    aor_balancer_record(&st[1], &pol, AOR_OUTCOME_THROTTLED, 3000, now);
    CHECK_EQ_INT(aor_balancer_pick(c, 2, now, 0, &earliest), -1);
    CHECK_EQ_INT(earliest, now + 3000);
    /* a later, shorter 429 does not shorten a running cooldown */
    aor_balancer_record(&st[0], &pol, AOR_OUTCOME_THROTTLED, 1000, now);
    CHECK_EQ_INT(st[0].cooldown_until_ms, now + 8000);
}

static void test_weights(void)
{
    struct aor_backend_state st[2];
    struct aor_balancer_candidate c[2];
    int64_t now = 0, earliest;
    int counts[2] = {0, 0};
    uint32_t r;

    setup(st, c, 2);
    c[0].weight = 3;
    c[1].weight = 1;
    for (r = 0; r < 1000; ++r)
        ++counts[aor_balancer_pick(c, 2, now, r * 4294967u, &earliest)];
    /* uniform draws over [0, 2^32): 3:1 split */
    CHECK(counts[0] >= 740 && counts[0] <= 760);
    CHECK_EQ_INT(counts[0] + counts[1], 1000);
}

static void test_headroom(void)
{
    struct aor_backend_state st[2];
    struct aor_balancer_candidate c[2];
    int64_t now = 60000 * 100, earliest;
    int counts[2] = {0, 0};
    uint32_t r;

    setup(st, c, 2);
    c[0].tpm = c[1].tpm = 100000;
    CHECK(aor_balancer_headroom(&st[0], 100000, now) == 1.0);
    /* the router sent 75k tokens to backend 0 this minute: a quarter left */
    aor_balancer_add_sent(&st[0], 75000, now);
    CHECK(aor_balancer_headroom(&st[0], 100000, now) > 0.249 && aor_balancer_headroom(&st[0], 100000, now) < 0.251);
    for (r = 0; r < 1000; ++r)
        ++counts[aor_balancer_pick(c, 2, now, r * 4294967u, &earliest)];
    CHECK(counts[0] >= 190 && counts[0] <= 210); /* 0.25 : 1 */
    /* a new minute resets what was sent */
    CHECK(aor_balancer_headroom(&st[0], 100000, now + 60000) == 1.0);
    /* a backend's own report wins when lower; stale after a minute */
    aor_balancer_report_remaining(&st[1], 10000, now);
    CHECK(aor_balancer_headroom(&st[1], 100000, now + 1000) > 0.099 && aor_balancer_headroom(&st[1], 100000, now + 1000) < 0.101);
    CHECK(aor_balancer_headroom(&st[1], 100000, now + 60001) == 1.0);
    /* exhausted: floor at 1% so it can still be probed */
    aor_balancer_report_remaining(&st[1], 0, now);
    CHECK(aor_balancer_headroom(&st[1], 100000, now) == 0.01);
    /* without tpm, a report of zero is the floor, a positive one full */
    CHECK(aor_balancer_headroom(&st[1], 0, now) == 0.01);
}

static void test_circuit(void)
{
    struct aor_backend_state st[2];
    struct aor_balancer_candidate c[2];
    int64_t now = 10000000, earliest;

    setup(st, c, 2);
    c[1].priority = 2;
    aor_balancer_record(&st[0], &pol, AOR_OUTCOME_FAILURE, 0, now);
    aor_balancer_record(&st[0], &pol, AOR_OUTCOME_FAILURE, 0, now);
    CHECK_EQ_INT(aor_balancer_pick(c, 2, now, 0, &earliest), 0); /* 2 < 3 failures: still closed */
    aor_balancer_record(&st[0], &pol, AOR_OUTCOME_FAILURE, 0, now);
    CHECK(aor_balancer_circuit_open(&st[0], now));
    CHECK_EQ_INT(aor_balancer_pick(c, 2, now, 0, &earliest), 1);
    CHECK_EQ_INT(earliest, 0); /* an open circuit is not a cooldown */
    /* after open_ms: exactly one probe */
    CHECK_EQ_INT(aor_balancer_pick(c, 2, now + 30000, 0, &earliest), 0);
    CHECK_EQ_INT(aor_balancer_pick(c, 2, now + 30000, 0, &earliest), 1);
    /* the probe fails: open again for open_ms */
    aor_balancer_record(&st[0], &pol, AOR_OUTCOME_FAILURE, 0, now + 30000);
    CHECK_EQ_INT(aor_balancer_pick(c, 2, now + 59999, 0, &earliest), 1);
    CHECK_EQ_INT(aor_balancer_pick(c, 2, now + 60000, 0, &earliest), 0);
    /* the probe succeeds: closed, failures forgotten */
    aor_balancer_record(&st[0], &pol, AOR_OUTCOME_SUCCESS, 0, now + 60000);
    CHECK(!aor_balancer_circuit_open(&st[0], now + 60000));
    CHECK_EQ_INT(st[0].consecutive_failures, 0);
    CHECK_EQ_INT(aor_balancer_pick(c, 2, now + 60000, 0, &earliest), 0);
    CHECK_EQ_INT(aor_balancer_pick(c, 2, now + 60000, 0, &earliest), 0);
    /* a success in between resets the count */
    aor_balancer_record(&st[0], &pol, AOR_OUTCOME_FAILURE, 0, now);
    aor_balancer_record(&st[0], &pol, AOR_OUTCOME_FAILURE, 0, now);
    aor_balancer_record(&st[0], &pol, AOR_OUTCOME_SUCCESS, 0, now);
    aor_balancer_record(&st[0], &pol, AOR_OUTCOME_FAILURE, 0, now);
    CHECK(!aor_balancer_circuit_open(&st[0], now));
}

static void test_retry_after(void)
{
    int capped;
    int64_t now = 1700000000000;

    CHECK_EQ_INT(aor_retry_after_ms("1500", 4, "7", 1, now, 10000, 300000, &capped), 1500);
    CHECK_EQ_INT(capped, 0);
    CHECK_EQ_INT(aor_retry_after_ms(NULL, 0, "7", 1, now, 10000, 300000, &capped), 7000);
    CHECK_EQ_INT(aor_retry_after_ms(NULL, 0, " 2 ", 3, now, 10000, 300000, &capped), 2000);
    CHECK_EQ_INT(aor_retry_after_ms(NULL, 0, NULL, 0, now, 10000, 300000, &capped), 10000);
    CHECK_EQ_INT(aor_retry_after_ms("abc", 3, "x", 1, now, 10000, 300000, &capped), 10000);
    CHECK_EQ_INT(aor_retry_after_ms(NULL, 0, "-5", 2, now, 10000, 300000, &capped), 10000);
    /* absurd values are capped and say so */
    CHECK_EQ_INT(aor_retry_after_ms(NULL, 0, "86400", 5, now, 10000, 300000, &capped), 300000);
    CHECK_EQ_INT(capped, 1);
    CHECK_EQ_INT(aor_retry_after_ms(NULL, 0, "99999999999999999999999", 23, now, 10000, 300000, &capped), 300000);
    CHECK_EQ_INT(capped, 1);
    /* bad retry-after-ms falls back to retry-after */
    CHECK_EQ_INT(aor_retry_after_ms("1.5", 3, "3", 1, now, 10000, 300000, &capped), 3000);
    /* HTTP-date: 2023-11-14T22:13:20Z is 1700000000 */
    CHECK_EQ_INT(aor_retry_after_ms(NULL, 0, "Tue, 14 Nov 2023 22:13:30 GMT", 29, now, 10000, 300000, &capped), 10000);
    CHECK_EQ_INT(aor_retry_after_ms(NULL, 0, "Tue, 14 Nov 2023 22:13:25 GMT", 29, now, 10000, 300000, &capped), 5000);
    CHECK_EQ_INT(aor_retry_after_ms(NULL, 0, "Tue, 14 Nov 2023 22:13:00 GMT", 29, now, 10000, 300000, &capped), 0);
    CHECK_EQ_INT(aor_retry_after_ms(NULL, 0, "Tue, 14 Foo 2023 22:13:25 GMT", 29, now, 10000, 300000, &capped), 10000);
}

int main(void)
{
    test_priority_and_skip();
    test_all_cooling();
    test_weights();
    test_headroom();
    test_circuit();
    test_retry_after();
    return aor_test_done("test_balancer");
}
