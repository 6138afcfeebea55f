/* unit tests for router/balancer.c: choice, cooldown, circuit, headroom, retry-after — on a hand-moved clock */
#include <string.h>
#include "balancer.h"
#include "test.h"

static struct aor_balancer_policy pol = {3, 30000, 120000, 300000};

struct fixture {
    struct aor_backend_state st[4];
    struct aor_deployment_state dep[4];
    struct aor_balancer_candidate c[4];
};

static void setup(struct fixture *f, size_t n)
{
    size_t i;
    memset(f, 0, sizeof(*f));
    for (i = 0; i != n; ++i) {
        aor_balancer_state_init(&f->st[i]);
        aor_balancer_deployment_init(&f->dep[i]);
        f->c[i].state = &f->st[i];
        f->c[i].dep = &f->dep[i];
        f->c[i].priority = 1;
        f->c[i].weight = 1;
    }
}

#define PICK(f, n, now, rnd, earliest) aor_balancer_pick((f)->c, (n), &pol, (now), (rnd), (earliest))

static void test_priority_and_skip(void)
{
    struct fixture f;
    int64_t now = 1000000, earliest;

    setup(&f, 3);
    f.c[0].priority = 2;
    f.c[1].priority = 1;
    f.c[2].priority = 3;
    CHECK_EQ_INT(PICK(&f, 3, now, 0, &earliest), 1);
    CHECK_EQ_INT(PICK(&f, 3, now, 0xffffffff, &earliest), 1);
    /* 429 on the primary: cooldown; the next priority serves */
    aor_balancer_record(&f.c[1], &pol, AOR_OUTCOME_THROTTLED, 5000, now);
    CHECK_EQ_INT(PICK(&f, 3, now, 0, &earliest), 0);
    CHECK_EQ_INT(earliest, now + 5000);
    /* tried candidates are excluded */
    f.c[0].tried = 1;
    CHECK_EQ_INT(PICK(&f, 3, now, 0, &earliest), 2);
    f.c[2].tried = 1;
    CHECK_EQ_INT(PICK(&f, 3, now, 0, &earliest), -1);
    CHECK_EQ_INT(earliest, now + 5000);
    /* cooldown ends: recovery */
    f.c[0].tried = f.c[2].tried = 0;
    CHECK_EQ_INT(PICK(&f, 3, now + 4999, 0, &earliest), 0);
    CHECK_EQ_INT(PICK(&f, 3, now + 5000, 0, &earliest), 1);
    CHECK(!aor_balancer_cooling(&f.dep[1], now + 5000));
}

static void test_all_cooling(void)
{
    struct fixture f;
    int64_t now = 5000000, earliest;

    setup(&f, 2);
    aor_balancer_record(&f.c[0], &pol, AOR_OUTCOME_THROTTLED, 8000, now);
    aor_balancer_record(&f.c[1], &pol, AOR_OUTCOME_THROTTLED, 3000, now);
    CHECK_EQ_INT(PICK(&f, 2, now, 0, &earliest), -1);
    CHECK_EQ_INT(earliest, now + 3000);
    /* a later, shorter 429 does not shorten a running cooldown */
    aor_balancer_record(&f.c[0], &pol, AOR_OUTCOME_THROTTLED, 1000, now);
    CHECK_EQ_INT(f.dep[0].cooldown_until_ms, now + 8000);
    /* a cooldown longer than the policy's maximum is cut to it */
    aor_balancer_record(&f.c[1], &pol, AOR_OUTCOME_THROTTLED, INT64_MAX / 2, now);
    CHECK_EQ_INT(f.dep[1].cooldown_until_ms, now + 300000);
}

/* issue 6 item 12: a 429 for one deployment leaves the backend's other deployments alone; circuits are per backend */
static void test_per_deployment(void)
{
    struct aor_backend_state st;
    struct aor_deployment_state a, b;
    struct aor_balancer_candidate ca = {0}, cb = {0};
    int64_t now = 7000000, earliest;

    aor_balancer_state_init(&st);
    aor_balancer_deployment_init(&a);
    aor_balancer_deployment_init(&b);
    ca.state = cb.state = &st;
    ca.dep = &a;
    cb.dep = &b;
    ca.weight = cb.weight = 1;
    aor_balancer_record(&ca, &pol, AOR_OUTCOME_THROTTLED, 10000, now);
    CHECK_EQ_INT(aor_balancer_pick(&ca, 1, &pol, now, 0, &earliest), -1);
    CHECK_EQ_INT(aor_balancer_pick(&cb, 1, &pol, now, 0, &earliest), 0);
    /* headroom too: what deployment a was sent does not count against b */
    ca.tpm = cb.tpm = 1000;
    aor_balancer_charge(&ca, 990, now);
    CHECK(aor_balancer_headroom(&a, 1000, now) < 0.02);
    CHECK(aor_balancer_headroom(&b, 1000, now) == 1.0);
    /* failures of either deployment open the one circuit */
    aor_balancer_record(&ca, &pol, AOR_OUTCOME_FAILURE, 0, now);
    aor_balancer_record(&cb, &pol, AOR_OUTCOME_FAILURE, 0, now);
    aor_balancer_record(&cb, &pol, AOR_OUTCOME_FAILURE, 0, now);
    CHECK(aor_balancer_circuit_open(&st, now));
    CHECK_EQ_INT(aor_balancer_pick(&cb, 1, &pol, now, 0, &earliest), -1);
}

static void test_weights(void)
{
    struct fixture f;
    int64_t now = 0, earliest;
    int counts[2] = {0, 0};
    uint32_t r;

    setup(&f, 2);
    f.c[0].weight = 3;
    f.c[1].weight = 1;
    for (r = 0; r < 1000; ++r)
        ++counts[PICK(&f, 2, now, r * 4294967u, &earliest)];
    /* uniform draws over [0, 2^32): 3:1 split */
    CHECK(counts[0] >= 740 && counts[0] <= 760);
    CHECK_EQ_INT(counts[0] + counts[1], 1000);
}

static void test_headroom(void)
{
    struct fixture f;
    int64_t now = 60000 * 100, earliest;
    int counts[2] = {0, 0};
    uint32_t r;

    setup(&f, 2);
    f.c[0].tpm = f.c[1].tpm = 100000;
    CHECK(aor_balancer_headroom(&f.dep[0], 100000, now) == 1.0);
    /* the router sent 75k tokens to backend 0 this minute: a quarter left */
    aor_balancer_charge(&f.c[0], 75000, now);
    CHECK(aor_balancer_headroom(&f.dep[0], 100000, now) > 0.249 && aor_balancer_headroom(&f.dep[0], 100000, now) < 0.251);
    for (r = 0; r < 1000; ++r)
        ++counts[PICK(&f, 2, now, r * 4294967u, &earliest)];
    CHECK(counts[0] >= 190 && counts[0] <= 210); /* 0.25 : 1 */
    /* a new minute resets what was sent */
    CHECK(aor_balancer_headroom(&f.dep[0], 100000, now + 60000) == 1.0);
    /* a backend's own report wins when lower; stale after a minute */
    aor_balancer_report_remaining(&f.dep[1], 10000, -1, now);
    CHECK(aor_balancer_headroom(&f.dep[1], 100000, now + 1000) > 0.099 &&
          aor_balancer_headroom(&f.dep[1], 100000, now + 1000) < 0.101);
    CHECK(aor_balancer_headroom(&f.dep[1], 100000, now + 60001) == 1.0);
    /* exhausted: floor at 1% so it can still be probed */
    aor_balancer_report_remaining(&f.dep[1], 0, -1, now);
    CHECK(aor_balancer_headroom(&f.dep[1], 100000, now) == 0.01);
    /* without tpm, a report of zero is the floor, a positive one full */
    CHECK(aor_balancer_headroom(&f.dep[1], 0, now) == 0.01);
}

/* issue 6 item 10: absurd estimates are clamped, counters saturate, an estimate is settled once */
static void test_estimates(void)
{
    struct fixture f;
    int64_t now = 60000 * 200 + 5000;
    int i;

    setup(&f, 2);
    f.c[0].tpm = 100000;
    /* clamped to the backend's tpm: one request can at most fill it */
    aor_balancer_charge(&f.c[0], INT64_MAX, now);
    CHECK_EQ_INT(f.c[0].charged, 100000);
    CHECK_EQ_INT(f.dep[0].sent_minute, 100000);
    CHECK(aor_balancer_headroom(&f.dep[0], 100000, now) == 0.01);
    /* taken back: headroom is whole again */
    aor_balancer_settle(&f.c[0], -1, now);
    CHECK_EQ_INT(f.dep[0].sent_minute, 0);
    CHECK(aor_balancer_headroom(&f.dep[0], 100000, now) == 1.0);
    aor_balancer_settle(&f.c[0], -1, now); /* twice: nothing more */
    CHECK_EQ_INT(f.dep[0].sent_minute, 0);
    /* replaced by the usage the backend reported */
    aor_balancer_charge(&f.c[0], 50000, now);
    aor_balancer_settle(&f.c[0], 1200, now);
    CHECK_EQ_INT(f.dep[0].sent_minute, 1200);
    /* a reported usage is clamped too (a hostile backend) */
    aor_balancer_charge(&f.c[0], 10, now);
    aor_balancer_settle(&f.c[0], INT64_MAX, now);
    CHECK_EQ_INT(f.dep[0].sent_minute, 1200 + AOR_BALANCER_MAX_TOKENS);
    /* negative estimates are nothing */
    aor_balancer_charge(&f.c[1], INT64_MIN, now);
    CHECK_EQ_INT(f.dep[1].sent_minute, 0);
    aor_balancer_settle(&f.c[1], INT64_MIN, now);
    CHECK_EQ_INT(f.dep[1].sent_minute, 0);
    /* without tpm, at most AOR_BALANCER_MAX_TOKENS per request, and sums saturate */
    for (i = 0; i < 2000000; ++i) {
        aor_balancer_charge(&f.c[1], 999999999999999999LL, now);
        f.c[1].charged_minute = 0; /* never settled */
    }
    CHECK_EQ_INT(f.dep[1].sent_minute, AOR_BALANCER_MAX_SENT);
    CHECK_EQ_INT(f.dep[1].sent_since_report, AOR_BALANCER_MAX_SENT);
    aor_balancer_report_remaining(&f.dep[1], INT64_MAX, -1, now);
    CHECK_EQ_INT(f.dep[1].remaining_tokens, AOR_BALANCER_MAX_SENT);
    CHECK(aor_balancer_headroom(&f.dep[1], 0, now) == 1.0);
    CHECK(aor_balancer_headroom(&f.dep[1], 1000000000000ULL, now) == 0.01);
    CHECK(aor_balancer_headroom(&f.dep[1], UINT64_MAX, now) >= 0.01);
    /* a charge from the previous minute is not taken from this one */
    setup(&f, 1);
    aor_balancer_charge(&f.c[0], 5000, now);
    aor_balancer_charge(&f.c[0], 0, now); /* an unsettled charge ends when a new one starts */
    CHECK_EQ_INT(f.dep[0].sent_minute, 0);
    aor_balancer_charge(&f.c[0], 5000, now);
    aor_balancer_settle(&f.c[0], -1, now + 60000);
    CHECK_EQ_INT(f.dep[0].sent_minute, 0); /* the new minute started at 0 and stays there */
    aor_balancer_charge(&f.c[0], 5000, now);
    aor_balancer_settle(&f.c[0], 700, now + 60000);
    CHECK_EQ_INT(f.dep[0].sent_minute, 700);
}

static void test_circuit(void)
{
    struct fixture f;
    int64_t now = 10000000, earliest;

    setup(&f, 2);
    f.c[1].priority = 2;
    aor_balancer_record(&f.c[0], &pol, AOR_OUTCOME_FAILURE, 0, now);
    aor_balancer_record(&f.c[0], &pol, AOR_OUTCOME_FAILURE, 0, now);
    CHECK_EQ_INT(PICK(&f, 2, now, 0, &earliest), 0); /* 2 < 3 failures: still closed */
    CHECK_EQ_INT(f.c[0].probe, 0);
    aor_balancer_record(&f.c[0], &pol, AOR_OUTCOME_FAILURE, 0, now);
    CHECK(aor_balancer_circuit_open(&f.st[0], now));
    CHECK_EQ_INT(PICK(&f, 2, now, 0, &earliest), 1);
    CHECK_EQ_INT(earliest, 0); /* an open circuit is not a cooldown */
    /* after open_ms: exactly one probe */
    CHECK_EQ_INT(PICK(&f, 2, now + 30000, 0, &earliest), 0);
    CHECK(f.c[0].probe != 0);
    {
        struct aor_balancer_candidate other = f.c[0]; /* another request's candidate for the same backend */
        other.probe = 0;
        CHECK_EQ_INT(aor_balancer_pick(&other, 1, &pol, now + 30000, 0, &earliest), -1);
    }
    CHECK_EQ_INT(PICK(&f, 2, now + 30000, 0, &earliest), 1);
    /* the probe fails: open again for open_ms */
    aor_balancer_record(&f.c[0], &pol, AOR_OUTCOME_FAILURE, 0, now + 30000);
    CHECK_EQ_INT(f.c[0].probe, 0);
    CHECK_EQ_INT(PICK(&f, 2, now + 59999, 0, &earliest), 1);
    CHECK_EQ_INT(PICK(&f, 2, now + 60000, 0, &earliest), 0);
    /* the probe succeeds: closed, failures forgotten */
    aor_balancer_record(&f.c[0], &pol, AOR_OUTCOME_SUCCESS, 0, now + 60000);
    CHECK(!aor_balancer_circuit_open(&f.st[0], now + 60000));
    CHECK_EQ_INT(f.st[0].consecutive_failures, 0);
    CHECK_EQ_INT(PICK(&f, 2, now + 60000, 0, &earliest), 0);
    CHECK_EQ_INT(PICK(&f, 2, now + 60000, 0, &earliest), 0);
    /* a success in between resets the count */
    aor_balancer_record(&f.c[0], &pol, AOR_OUTCOME_FAILURE, 0, now);
    aor_balancer_record(&f.c[0], &pol, AOR_OUTCOME_FAILURE, 0, now);
    aor_balancer_record(&f.c[0], &pol, AOR_OUTCOME_SUCCESS, 0, now);
    aor_balancer_record(&f.c[0], &pol, AOR_OUTCOME_FAILURE, 0, now);
    CHECK(!aor_balancer_circuit_open(&f.st[0], now));
}

/* issue 6 item 8: a probe whose attempt ends without a result (cancel, refusal) frees the backend */
static void test_probe_release(void)
{
    struct fixture f;
    struct aor_balancer_candidate a, b;
    int64_t now = 20000000, earliest, t;

    setup(&f, 1);
    for (int i = 0; i < 3; ++i)
        aor_balancer_record(&f.c[0], &pol, AOR_OUTCOME_FAILURE, 0, now);
    t = now + 30000; /* half-open */
    a = b = f.c[0];
    CHECK_EQ_INT(aor_balancer_pick(&a, 1, &pol, t, 0, &earliest), 0);
    CHECK(a.probe != 0);
    CHECK_EQ_INT(aor_balancer_pick(&b, 1, &pol, t, 0, &earliest), -1); /* one probe at a time */
    /* the client cancels: released, the next request probes */
    aor_balancer_release_probe(&a);
    CHECK_EQ_INT(a.probe, 0);
    CHECK_EQ_INT(aor_balancer_pick(&b, 1, &pol, t + 1, 0, &earliest), 0);
    CHECK(b.probe != 0);
    /* a late, second release of the first claim does not free the second probe */
    a.probe = t + (int64_t)pol.probe_lease_ms;
    aor_balancer_release_probe(&a);
    a.probe = 0;
    CHECK_EQ_INT(aor_balancer_pick(&a, 1, &pol, t + 2, 0, &earliest), -1);
    /* a claim nobody ends (a lost request) lapses after the lease */
    CHECK_EQ_INT(aor_balancer_pick(&a, 1, &pol, t + 1 + (int64_t)pol.probe_lease_ms - 1, 0, &earliest), -1);
    CHECK_EQ_INT(aor_balancer_pick(&a, 1, &pol, t + 1 + (int64_t)pol.probe_lease_ms, 0, &earliest), 0);
    /* the wall clock steps back 100 s: a's claim now ends further away than a lease can: it has lapsed */
    CHECK_EQ_INT(aor_balancer_pick(&b, 1, &pol, t + 2 + (int64_t)pol.probe_lease_ms, 0, &earliest), -1);
    CHECK_EQ_INT(aor_balancer_pick(&b, 1, &pol, t + 1 + (int64_t)pol.probe_lease_ms - 100000, 0, &earliest), 0);
    /* b's result still counts: a success closes the circuit, a's release afterwards changes nothing */
    aor_balancer_record(&b, &pol, AOR_OUTCOME_SUCCESS, 0, t + 5);
    aor_balancer_release_probe(&a);
    CHECK(!aor_balancer_circuit_open(&f.st[0], t + 5));
    CHECK_EQ_INT(f.st[0].probe_until_ms, 0);
    CHECK_EQ_INT(aor_balancer_pick(&b, 1, &pol, t + 6, 0, &earliest), 0);
    CHECK_EQ_INT(b.probe, 0); /* closed: no probe to claim */
}

/* issue 6 item 11: cooldowns read from Redis */
static void test_shared_cooldown(void)
{
    struct aor_deployment_state d;
    int64_t now = 1700000000000;

    CHECK_EQ_INT(aor_balancer_parse_until("1700000005000", 13), 1700000005000);
    CHECK_EQ_INT(aor_balancer_parse_until("99999999999999999999", 20), INT64_MAX);
    CHECK_EQ_INT(aor_balancer_parse_until("999999999999999999999999999999999", 33), INT64_MAX);
    CHECK_EQ_INT(aor_balancer_parse_until("-5", 2), -1);
    CHECK_EQ_INT(aor_balancer_parse_until("abc", 3), -1);
    CHECK_EQ_INT(aor_balancer_parse_until("12abc", 5), -1);
    CHECK_EQ_INT(aor_balancer_parse_until(" 12", 3), -1);
    CHECK_EQ_INT(aor_balancer_parse_until("1.5", 3), -1);
    CHECK_EQ_INT(aor_balancer_parse_until("", 0), -1);

    aor_balancer_deployment_init(&d);
    CHECK_EQ_INT(aor_balancer_adopt_cooldown(&d, 1, now, 300000), 0); /* far past */
    CHECK_EQ_INT(aor_balancer_adopt_cooldown(&d, now, now, 300000), 0);
    CHECK_EQ_INT(d.cooldown_until_ms, 0);
    CHECK_EQ_INT(aor_balancer_adopt_cooldown(&d, INT64_MAX, now, 300000), 1);
    CHECK_EQ_INT(d.cooldown_until_ms, now + 300000);
    /* the later of local and (capped) remote: a shorter remote does not shorten it */
    CHECK_EQ_INT(aor_balancer_adopt_cooldown(&d, now + 5000, now, 300000), 0);
    CHECK_EQ_INT(d.cooldown_until_ms, now + 300000);
    /* a second later the cap moved a second too */
    CHECK_EQ_INT(aor_balancer_adopt_cooldown(&d, INT64_MAX, now + 1000, 300000), 1);
    CHECK_EQ_INT(d.cooldown_until_ms, now + 301000);
    /* a reload with a smaller max_cooldown_ms cuts a running cooldown */
    aor_balancer_cap_cooldown(&d, now + 1000, 5000);
    CHECK_EQ_INT(d.cooldown_until_ms, now + 6000);
    aor_balancer_cap_cooldown(&d, now + 1000, 300000);
    CHECK_EQ_INT(d.cooldown_until_ms, now + 6000);
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

#define RESET(lit) aor_ratelimit_reset_ms(lit, sizeof(lit) - 1)

/* issue 10: OpenAI's x-ratelimit-reset-* (Go durations), parsed strictly */
static void test_ratelimit_reset(void)
{
    /* what OpenAI sends */
    CHECK_EQ_INT(RESET("6m0s"), 360000);
    CHECK_EQ_INT(RESET("1s"), 1000);
    CHECK_EQ_INT(RESET("20ms"), 20);
    CHECK_EQ_INT(RESET("1h2m3.5s"), 3723500);
    CHECK_EQ_INT(RESET("0s"), 0);
    CHECK_EQ_INT(RESET("0"), 0);
    CHECK_EQ_INT(RESET("59.823s"), 59823);
    CHECK_EQ_INT(RESET("1m30.5s"), 90500);
    CHECK_EQ_INT(RESET("2h"), 7200000);
    CHECK_EQ_INT(RESET("17.5ms"), 18); /* rounded up: never shorter than asked */
    CHECK_EQ_INT(RESET("1.000001s"), 1001);
    CHECK_EQ_INT(RESET("999us"), 1);
    CHECK_EQ_INT(RESET("1\xc2\xb5s"), 1); /* µs as Go prints it (U+00B5) */
    CHECK_EQ_INT(RESET("1\xce\xbcs"), 1); /* and U+03BC */
    CHECK_EQ_INT(RESET("5ns"), 1);
    CHECK_EQ_INT(RESET("1.123456ms"), 2);
    CHECK_EQ_INT(RESET(" 1s\t"), 1000); /* header whitespace around the value */
    /* not that format: ignored */
    CHECK_EQ_INT(RESET(""), -1);
    CHECK_EQ_INT(RESET("   "), -1);
    CHECK_EQ_INT(RESET("1"), -1); /* a bare number has no unit (Azure-style seconds are not guessed) */
    CHECK_EQ_INT(RESET("60"), -1);
    CHECK_EQ_INT(RESET("-1s"), -1);
    CHECK_EQ_INT(RESET("+1s"), -1);
    CHECK_EQ_INT(RESET("1 s"), -1);
    CHECK_EQ_INT(RESET("1s 2ms"), -1);
    CHECK_EQ_INT(RESET("s"), -1);
    CHECK_EQ_INT(RESET("ms"), -1);
    CHECK_EQ_INT(RESET(".5s"), -1);
    CHECK_EQ_INT(RESET("1.s"), -1);
    CHECK_EQ_INT(RESET("1..5s"), -1);
    CHECK_EQ_INT(RESET("1.5.5s"), -1);
    CHECK_EQ_INT(RESET("1e3s"), -1);
    CHECK_EQ_INT(RESET("0x10s"), -1);
    CHECK_EQ_INT(RESET("NaNs"), -1);
    CHECK_EQ_INT(RESET("infs"), -1);
    CHECK_EQ_INT(RESET("1d"), -1); /* Go has no days */
    CHECK_EQ_INT(RESET("1S"), -1);
    CHECK_EQ_INT(RESET("1H"), -1);
    CHECK_EQ_INT(RESET("1sec"), -1);
    CHECK_EQ_INT(RESET("1s1s"), -1); /* a unit twice */
    CHECK_EQ_INT(RESET("1s1m"), -1); /* out of order */
    CHECK_EQ_INT(RESET("1ms1s"), -1);
    CHECK_EQ_INT(RESET("1m1h"), -1);
    CHECK_EQ_INT(RESET("1s\r\nx-evil: 1"), -1);
    CHECK_EQ_INT(aor_ratelimit_reset_ms("1s\0", 3), -1);
    CHECK_EQ_INT(RESET("1\xc2s"), -1); /* a torn µ */
    CHECK_EQ_INT(RESET("1\xb5s"), -1);
    CHECK_EQ_INT(RESET("1.1234567ms"), -1); /* finer than a nanosecond */
    CHECK_EQ_INT(RESET("1.5ns"), -1);
    CHECK_EQ_INT(RESET("1.0000000001s"), -1);
    CHECK_EQ_INT(aor_ratelimit_reset_ms(NULL, 0), -1);
    /* bounded: at most 10 integer digits per unit, a short value */
    CHECK_EQ_INT(RESET("12345678901s"), -1);
    CHECK_EQ_INT(RESET("99999999999999999999999999h"), -1);
    CHECK_EQ_INT(RESET("0000000000000000000001s"), -1);
    {
        char big[200];
        memset(big, '1', sizeof(big));
        big[198] = 's';
        CHECK_EQ_INT(aor_ratelimit_reset_ms(big, 199), -1);
    }
    /* absurd but well formed: saturates at the bound, the caller caps it at max_cooldown_ms */
    CHECK_EQ_INT(RESET("9999999999h"), AOR_RATELIMIT_RESET_MAX_MS);
    CHECK_EQ_INT(RESET("9999999999h9999999999m9999999999.999999999s9999999999ms9999999999us9999999999ns"),
                 AOR_RATELIMIT_RESET_MAX_MS);
    CHECK_EQ_INT(RESET("2562047h47m16.854775807s"), AOR_RATELIMIT_RESET_MAX_MS); /* Go's largest duration */
    CHECK_EQ_INT(RESET("9999999999ms"), 9999999999LL);
}

/* a duration as Go's time.Duration.String() prints it (what OpenAI's servers send) */
static void go_duration(int64_t ns, char *buf, size_t cap)
{
    char frac[16];
    const char *unit;
    int64_t whole, rest, scale;
    int digits, n;

    if (ns == 0) {
        snprintf(buf, cap, "0s");
        return;
    }
    if (ns < 1000) {
        snprintf(buf, cap, "%lldns", (long long)ns);
        return;
    }
    n = 0;
    if (ns >= 1000000000LL) {
        int64_t h = ns / 3600000000000LL, m = ns / 60000000000LL % 60;
        if (h != 0)
            n = snprintf(buf, cap, "%lldh%lldm", (long long)h, (long long)m);
        else if (m != 0)
            n = snprintf(buf, cap, "%lldm", (long long)m);
        ns %= 60000000000LL;
        scale = 1000000000LL, digits = 9, unit = "s";
    } else if (ns >= 1000000) {
        scale = 1000000, digits = 6, unit = "ms";
    } else {
        scale = 1000, digits = 3, unit = "\xc2\xb5s";
    }
    whole = ns / scale;
    rest = ns % scale;
    frac[0] = '\0';
    if (rest != 0) {
        snprintf(frac, sizeof(frac), ".%0*lld", digits, (long long)rest);
        size_t l = strlen(frac);
        while (l > 1 && frac[l - 1] == '0')
            frac[--l] = '\0';
    }
    snprintf(buf + n, cap - (size_t)n, "%lld%s%s", (long long)whole, frac, unit);
}

/* every duration Go prints parses back to itself (rounded up to ms); random bytes never crash or leave the range */
static void test_ratelimit_reset_roundtrip(void)
{
    static const char alphabet[] = "0123456789.hmsun\xc2\xb5\xce\xbc \t-+e";
    uint64_t x = 88172645463325252ULL;
    char buf[128];
    int i, bad = 0, out_of_range = 0;

    for (i = 0; i < 200000; ++i) {
        int64_t ns, got, want;
        x ^= x << 13, x ^= x >> 7, x ^= x << 17; /* xorshift64 */
        /* spread over ns .. days: a random magnitude, then a random value below it */
        ns = (int64_t)(x % 1000003);
        switch (i % 5) {
        case 1:
            ns = (int64_t)(x % 1000000000ULL);
            break;
        case 2:
            ns = (int64_t)(x % 86400000000000ULL);
            break;
        case 3:
            ns = (int64_t)(x % 1000) * 1000000;
            break;
        case 4:
            ns = (int64_t)(x % 3600) * 1000000000LL;
            break;
        }
        go_duration(ns, buf, sizeof(buf));
        got = aor_ratelimit_reset_ms(buf, strlen(buf));
        want = ns / 1000000 + (ns % 1000000 != 0);
        if (got != want && bad++ < 5)
            fprintf(stderr, "roundtrip: %lld ns printed \"%s\" parsed %lld, expected %lld\n", (long long)ns, buf, (long long)got,
                    (long long)want);
    }
    CHECK_EQ_INT(bad, 0);
    for (i = 0; i < 200000; ++i) {
        size_t len, k;
        int64_t got;
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        len = (size_t)(x % 40);
        for (k = 0; k != len; ++k) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            buf[k] = alphabet[x % (sizeof(alphabet) - 1)];
        }
        got = aor_ratelimit_reset_ms(buf, len); /* not NUL-terminated: a read past len shows under ASan */
        if (got < -1 || got > AOR_RATELIMIT_RESET_MAX_MS)
            ++out_of_range;
    }
    CHECK_EQ_INT(out_of_range, 0);
}

/* issue 10: a 429 without retry-after cools down until the exhausted limit resets */
static void test_ratelimit_cooldown(void)
{
    /* tokens exhausted: their reset, not the requests' */
    CHECK_EQ_INT(aor_ratelimit_cooldown_ms(0, 6000, 10, 200), 6000);
    /* requests exhausted */
    CHECK_EQ_INT(aor_ratelimit_cooldown_ms(500, 6000, 0, 200), 200);
    /* both: the later */
    CHECK_EQ_INT(aor_ratelimit_cooldown_ms(0, 6000, 0, 8000), 8000);
    /* neither said to be exhausted (a request larger than what is left): the later reset */
    CHECK_EQ_INT(aor_ratelimit_cooldown_ms(100, 3000, 5, 20), 3000);
    CHECK_EQ_INT(aor_ratelimit_cooldown_ms(-1, 3000, -1, -1), 3000);
    CHECK_EQ_INT(aor_ratelimit_cooldown_ms(-1, -1, -1, 20), 20);
    /* the exhausted limit's reset is unusable: the other one's */
    CHECK_EQ_INT(aor_ratelimit_cooldown_ms(0, -1, 5, 20), 20);
    /* nothing usable */
    CHECK_EQ_INT(aor_ratelimit_cooldown_ms(0, -1, 0, -1), -1);
    CHECK_EQ_INT(aor_ratelimit_cooldown_ms(-1, -1, -1, -1), -1);
}

/* issue 10: the reset headers bound how long a headroom report holds */
static void test_headroom_reset(void)
{
    struct aor_deployment_state d;
    int64_t now = 60000 * 300 + 1000;

    aor_balancer_deployment_init(&d);
    /* 0 tokens left, back in 20 ms: the floor until then, whole after */
    aor_balancer_report_remaining(&d, 0, 20, now);
    CHECK(aor_balancer_headroom(&d, 100000, now + 19) == 0.01);
    CHECK(aor_balancer_headroom(&d, 100000, now + 20) == 1.0);
    /* a reset beyond a minute does not hold the report longer than a minute */
    aor_balancer_report_remaining(&d, 0, 3600000, now);
    CHECK(aor_balancer_headroom(&d, 100000, now + 59999) == 0.01);
    CHECK(aor_balancer_headroom(&d, 100000, now + 60000) == 1.0);
    /* unknown reset: a minute, as before */
    aor_balancer_report_remaining(&d, 0, -1, now);
    CHECK(aor_balancer_headroom(&d, 100000, now + 59999) == 0.01);
    CHECK(aor_balancer_headroom(&d, 100000, now + 60000) == 1.0);
    /* no requests left: the floor until their reset, whatever the tokens say */
    aor_balancer_deployment_init(&d);
    aor_balancer_report_requests(&d, 0, 500, now);
    CHECK(aor_balancer_headroom(&d, 100000, now + 499) == 0.01);
    CHECK(aor_balancer_headroom(&d, 100000, now + 500) == 1.0);
    aor_balancer_report_requests(&d, 0, -1, now); /* unknown reset: a minute */
    CHECK(aor_balancer_headroom(&d, 100000, now + 59999) == 0.01);
    CHECK(aor_balancer_headroom(&d, 100000, now + 60000) == 1.0);
    aor_balancer_report_requests(&d, 0, 99999999, now); /* capped at a minute */
    CHECK(aor_balancer_headroom(&d, 100000, now + 60000) == 1.0);
    /* requests left again: the floor is lifted at once */
    aor_balancer_report_requests(&d, 0, 5000, now);
    aor_balancer_report_requests(&d, 3, 5000, now + 10);
    CHECK(aor_balancer_headroom(&d, 100000, now + 11) == 1.0);
    aor_balancer_report_requests(&d, INT64_MAX, 5000, now + 10);
    CHECK(aor_balancer_headroom(&d, 100000, now + 11) == 1.0);
}

int main(void)
{
    test_priority_and_skip();
    test_all_cooling();
    test_per_deployment();
    test_weights();
    test_headroom();
    test_estimates();
    test_circuit();
    test_probe_release();
    test_shared_cooldown();
    test_retry_after();
    test_ratelimit_reset();
    test_ratelimit_reset_roundtrip();
    test_ratelimit_cooldown();
    test_headroom_reset();
    return aor_test_done("test_balancer");
}
