/*
 * balancer.c — see balancer.h. Fields of struct aor_backend_state and struct
 * aor_deployment_state are read and written with relaxed atomics: workers race benignly
 * (two 429s may both set a cooldown; the later end wins), and no decision needs more than
 * one field to be consistent with another except the half-open probe, which is claimed by
 * CAS. The claim is the lease's end (probe_until_ms): releasing compares it, so a late
 * release of an old claim cannot free a newer one. Token counters change by CAS loops that
 * saturate in [0, AOR_BALANCER_MAX_SENT]; every input is clamped first, so no sum overflows.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "balancer.h"

#define LOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)

#define MINUTE_MS 60000

void aor_balancer_state_init(struct aor_backend_state *st)
{
    memset(st, 0, sizeof(*st));
}

void aor_balancer_deployment_init(struct aor_deployment_state *dep)
{
    memset(dep, 0, sizeof(*dep));
    dep->remaining_tokens = -1;
    dep->remaining_requests = -1;
}

int aor_balancer_cooling(const struct aor_deployment_state *dep, int64_t now_ms)
{
    return LOAD(&dep->cooldown_until_ms) > now_ms;
}

int aor_balancer_circuit_open(const struct aor_backend_state *st, int64_t now_ms)
{
    return LOAD(&st->circuit_open_until_ms) > now_ms;
}

static int64_t clamp64(int64_t v, int64_t lo, int64_t hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* adds `delta` to *p keeping the result in [0, AOR_BALANCER_MAX_SENT]; |delta| is at most that bound */
static void add_saturating(int64_t *p, int64_t delta)
{
    int64_t old = LOAD(p), next;

    do
        next = clamp64(old + delta, 0, AOR_BALANCER_MAX_SENT);
    while (!__atomic_compare_exchange_n(p, &old, next, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
}

/* tokens a figure from a client or a backend may count for: [0, AOR_BALANCER_MAX_TOKENS], and at most tpm when known */
static int64_t clamp_tokens(int64_t tokens, uint64_t tpm)
{
    int64_t hi = AOR_BALANCER_MAX_TOKENS;

    if (tpm != 0 && tpm < (uint64_t)hi)
        hi = (int64_t)tpm;
    return clamp64(tokens, 0, hi);
}

double aor_balancer_headroom(const struct aor_deployment_state *dep, uint64_t tpm, int64_t now_ms)
{
    int64_t est = INT64_MAX, sent_minute = 0, remaining = LOAD(&dep->remaining_tokens);
    int64_t t = tpm > (uint64_t)AOR_BALANCER_MAX_SENT ? AOR_BALANCER_MAX_SENT : (int64_t)tpm;
    double f;

    /* every term is in [0, AOR_BALANCER_MAX_SENT]: no difference below can overflow */
    if (LOAD(&dep->minute) == now_ms / MINUTE_MS)
        sent_minute = LOAD(&dep->sent_minute);
    if (t > 0)
        est = t - sent_minute;
    /* no requests left until the backend's reset: the floor */
    if (LOAD(&dep->requests_out_until_ms) > now_ms)
        return 0.01;
    /* a report past its reset (at most a minute) describes a window that has since refilled;
     * remaining_at_ms bounds it too, for a clock that stepped back */
    if (remaining >= 0 && now_ms < LOAD(&dep->remaining_until_ms) && now_ms - LOAD(&dep->remaining_at_ms) < MINUTE_MS) {
        int64_t r = remaining - LOAD(&dep->sent_since_report);
        if (r < est)
            est = r;
    }
    if (est == INT64_MAX)
        return 1.0;
    if (t > 0)
        f = (double)est / (double)t;
    else
        f = est > 0 ? 1.0 : 0.0;
    /* an exhausted backend stays a (rare) choice: its next answer refreshes the figure */
    if (f < 0.01)
        f = 0.01;
    if (f > 1.0)
        f = 1.0;
    return f;
}

/* 1 while a probe claim (its lease's end) holds: not yet reached, and not further away than a
 * lease can be (a claim made before the wall clock stepped back has lapsed) */
static int probe_held(int64_t probe, const struct aor_balancer_policy *pol, int64_t now_ms)
{
    return probe != 0 && probe > now_ms && probe - now_ms <= (int64_t)(pol->probe_lease_ms != 0 ? pol->probe_lease_ms : 1);
}

static int eligible(struct aor_balancer_candidate *c, const struct aor_balancer_policy *pol, int64_t now_ms, int64_t *earliest)
{
    int64_t until, open_until;

    if (c->tried)
        return 0;
    until = LOAD(&c->dep->cooldown_until_ms);
    if (until > now_ms) {
        if (*earliest == 0 || until < *earliest)
            *earliest = until;
        return 0;
    }
    open_until = LOAD(&c->state->circuit_open_until_ms);
    if (open_until > now_ms)
        return 0;
    /* half-open: only while nobody holds the probe (a claim that outlived any attempt has lapsed) */
    if (open_until != 0 && probe_held(LOAD(&c->state->probe_until_ms), pol, now_ms))
        return 0;
    return 1;
}

int aor_balancer_pick(struct aor_balancer_candidate *c, size_t n, const struct aor_balancer_policy *pol, int64_t now_ms,
                      uint32_t rnd, int64_t *earliest_cooldown_end_ms)
{
    char skip[64] = {0}; /* probes lost to another worker during this pick */

    *earliest_cooldown_end_ms = 0;
    if (n > sizeof(skip))
        n = sizeof(skip);
    for (;;) {
        int best_prio = 0, found = 0, chosen = -1;
        double total = 0, r, acc = 0;
        int64_t expected, claim;
        size_t i;

        for (i = 0; i != n; ++i) {
            if (skip[i] || !eligible(&c[i], pol, now_ms, earliest_cooldown_end_ms))
                continue;
            if (!found || c[i].priority < best_prio) {
                best_prio = c[i].priority;
                found = 1;
            }
        }
        if (!found)
            return -1;
        for (i = 0; i != n; ++i) {
            int64_t dummy = 0;
            if (!skip[i] && c[i].priority == best_prio && eligible(&c[i], pol, now_ms, &dummy))
                total += c[i].weight * aor_balancer_headroom(c[i].dep, c[i].tpm, now_ms);
        }
        r = (double)rnd / 4294967296.0 * total;
        for (i = 0; i != n; ++i) {
            int64_t dummy = 0;
            if (skip[i] || c[i].priority != best_prio || !eligible(&c[i], pol, now_ms, &dummy))
                continue;
            chosen = (int)i;
            acc += c[i].weight * aor_balancer_headroom(c[i].dep, c[i].tpm, now_ms);
            if (r < acc)
                break;
        }
        c[chosen].probe = 0;
        if (LOAD(&c[chosen].state->circuit_open_until_ms) == 0)
            return chosen;
        /* half-open: exactly one request probes the backend; its claim is the lease's end, which
         * also tells a late release of an older claim apart from this one */
        expected = LOAD(&c[chosen].state->probe_until_ms);
        claim = now_ms + (int64_t)(pol->probe_lease_ms != 0 ? pol->probe_lease_ms : 1);
        if (!probe_held(expected, pol, now_ms) && __atomic_compare_exchange_n(&c[chosen].state->probe_until_ms, &expected, claim, 0,
                                                                              __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
            c[chosen].probe = claim;
            return chosen;
        }
        skip[chosen] = 1;
    }
}

void aor_balancer_release_probe(struct aor_balancer_candidate *c)
{
    int64_t expected = c->probe;

    if (expected == 0)
        return;
    c->probe = 0;
    /* only our own claim: the circuit may have reopened and another probe been claimed since */
    __atomic_compare_exchange_n(&c->state->probe_until_ms, &expected, 0, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
}

void aor_balancer_record(struct aor_balancer_candidate *c, const struct aor_balancer_policy *pol, enum aor_balancer_outcome outcome,
                         int64_t cooldown_ms, int64_t now_ms)
{
    struct aor_backend_state *st = c->state;

    switch (outcome) {
    case AOR_OUTCOME_THROTTLED: {
        int64_t until;
        if (pol->max_cooldown_ms != 0 && cooldown_ms > (int64_t)pol->max_cooldown_ms)
            cooldown_ms = (int64_t)pol->max_cooldown_ms;
        until = now_ms + (cooldown_ms > 0 ? cooldown_ms : 0);
        if (until > LOAD(&c->dep->cooldown_until_ms)) {
            STORE(&c->dep->cooldown_until_ms, until);
            STORE(&c->dep->cooldown_shared, 0);
        }
    }
        /* a 429 proves the backend is up: it closes the circuit like a success */
        /* fallthrough */
    case AOR_OUTCOME_SUCCESS:
        STORE(&st->consecutive_failures, 0);
        STORE(&st->circuit_open_until_ms, 0);
        STORE(&st->probe_until_ms, 0);
        c->probe = 0;
        break;
    case AOR_OUTCOME_FAILURE: {
        int failures = __atomic_add_fetch(&st->consecutive_failures, 1, __ATOMIC_RELAXED);
        int64_t open_until = LOAD(&st->circuit_open_until_ms);
        if (open_until != 0 || failures >= (int)pol->circuit_failures) {
            /* the threshold was reached, or the half-open probe failed: (re)open */
            STORE(&st->circuit_open_until_ms, now_ms + (int64_t)pol->circuit_open_ms);
            STORE(&st->probe_until_ms, 0);
            c->probe = 0;
        }
        aor_balancer_release_probe(c);
    } break;
    }
}

/* adds to both counters of tokens sent; the minute's counter restarts with a new minute */
static void add_sent(struct aor_deployment_state *dep, int64_t minute_delta, int64_t report_delta, int64_t now_ms)
{
    int64_t minute = now_ms / MINUTE_MS;

    if (LOAD(&dep->minute) != minute) {
        /* two workers may both restart it: the loser's addition is lost, which the next report corrects */
        STORE(&dep->minute, minute);
        STORE(&dep->sent_minute, 0);
        STORE(&dep->requests_minute, 0);
    }
    if (minute_delta != 0)
        add_saturating(&dep->sent_minute, minute_delta);
    if (report_delta != 0)
        add_saturating(&dep->sent_since_report, report_delta);
}

void aor_balancer_charge(struct aor_balancer_candidate *c, int64_t estimate, int64_t now_ms)
{
    int64_t t = clamp_tokens(estimate, c->tpm);

    if (c->charged_minute != 0) /* an earlier charge was not settled: it ends here */
        aor_balancer_settle(c, -1, now_ms);
    c->charged = t;
    c->charged_minute = now_ms / MINUTE_MS + 1; /* +1: 0 means "no charge" */
    add_sent(c->dep, t, t, now_ms);
    __atomic_add_fetch(&c->dep->requests_minute, 1, __ATOMIC_RELAXED);
}

void aor_balancer_settle(struct aor_balancer_candidate *c, int64_t actual, int64_t now_ms)
{
    int64_t spent, minute_delta;

    if (c->charged_minute == 0)
        return;
    spent = actual < 0 ? 0 : clamp_tokens(actual, 0);
    /* the charge counted in its own minute only: a later minute gets what was spent, nothing taken back */
    minute_delta = c->charged_minute - 1 == now_ms / MINUTE_MS ? spent - c->charged : spent;
    add_sent(c->dep, minute_delta, spent - c->charged, now_ms);
    c->charged = 0;
    c->charged_minute = 0;
}

/* how long a report with this reset holds: the reset, at most a minute; unknown (< 0): a minute */
static int64_t report_span(int64_t reset_ms)
{
    return reset_ms < 0 || reset_ms > MINUTE_MS ? MINUTE_MS : reset_ms;
}

void aor_balancer_report_remaining(struct aor_deployment_state *dep, int64_t remaining, int64_t reset_ms, int64_t now_ms)
{
    STORE(&dep->remaining_tokens, clamp64(remaining, 0, AOR_BALANCER_MAX_SENT));
    STORE(&dep->remaining_at_ms, now_ms);
    STORE(&dep->remaining_until_ms, now_ms + report_span(reset_ms));
    STORE(&dep->sent_since_report, 0);
}

void aor_balancer_report_requests(struct aor_deployment_state *dep, int64_t remaining, int64_t reset_ms, int64_t now_ms)
{
    if (remaining < 0)
        return;
    STORE(&dep->remaining_requests, clamp64(remaining, 0, AOR_BALANCER_MAX_SENT));
    STORE(&dep->requests_out_until_ms, remaining == 0 ? now_ms + report_span(reset_ms) : 0);
}

void aor_balancer_minute_sent(const struct aor_deployment_state *dep, int64_t now_ms, int64_t *tokens, int64_t *requests)
{
    int same = LOAD(&dep->minute) == now_ms / MINUTE_MS;

    *tokens = same ? LOAD(&dep->sent_minute) : 0;
    *requests = same ? LOAD(&dep->requests_minute) : 0;
}

int aor_balancer_adopt_cooldown(struct aor_deployment_state *dep, int64_t until_ms, int64_t now_ms, int64_t max_cooldown_ms)
{
    if (until_ms <= now_ms)
        return 0;
    if (until_ms - now_ms > max_cooldown_ms)
        until_ms = now_ms + max_cooldown_ms;
    if (until_ms <= LOAD(&dep->cooldown_until_ms))
        return 0;
    STORE(&dep->cooldown_until_ms, until_ms);
    STORE(&dep->cooldown_shared, 1);
    return 1;
}

void aor_balancer_cap_cooldown(struct aor_deployment_state *dep, int64_t now_ms, int64_t max_cooldown_ms)
{
    if (LOAD(&dep->cooldown_until_ms) - now_ms > max_cooldown_ms)
        STORE(&dep->cooldown_until_ms, now_ms + max_cooldown_ms);
}

int64_t aor_balancer_parse_until(const char *s, size_t len)
{
    int64_t v = 0;
    size_t i;

    if (len == 0)
        return -1;
    for (i = 0; i != len; ++i) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        if (v > (INT64_MAX - 9) / 10)
            v = INT64_MAX; /* keep checking the rest are digits */
        else
            v = v * 10 + (s[i] - '0');
    }
    return v;
}

/* parses a non-negative decimal integer filling the whole span; -1 if it is not one */
static int64_t parse_uint(const char *s, size_t len)
{
    int64_t v = 0;
    size_t i;

    while (len != 0 && (s[len - 1] == ' ' || s[len - 1] == '\t'))
        --len;
    while (len != 0 && (*s == ' ' || *s == '\t'))
        ++s, --len;
    if (len == 0)
        return -1;
    for (i = 0; i != len; ++i) {
        if (!isdigit((unsigned char)s[i]))
            return -1;
        /* absurd values saturate (and are capped by the caller) instead of overflowing */
        if (v < INT64_MAX / 100)
            v = v * 10 + (s[i] - '0');
    }
    return v;
}

/* IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") to unix ms; -1 if it is not one */
static int64_t parse_http_date(const char *s, size_t len)
{
    static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    char buf[64];
    char mon[4];
    int day, year, hh, mm, ss, consumed = 0;
    struct tm tm;
    const char *m;

    if (len >= sizeof(buf))
        return -1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    if (sscanf(buf, "%*3s, %2d %3s %4d %2d:%2d:%2d GMT%n", &day, mon, &year, &hh, &mm, &ss, &consumed) != 6 || consumed != (int)len)
        return -1;
    if ((m = strstr(months, mon)) == NULL || (m - months) % 3 != 0 || strlen(mon) != 3)
        return -1;
    memset(&tm, 0, sizeof(tm));
    tm.tm_mday = day;
    tm.tm_mon = (int)((m - months) / 3);
    tm.tm_year = year - 1900;
    tm.tm_hour = hh;
    tm.tm_min = mm;
    tm.tm_sec = ss;
    return (int64_t)timegm(&tm) * 1000;
}

int64_t aor_retry_after_ms(const char *ms_value, size_t ms_len, const char *value, size_t len, int64_t now_ms, int64_t default_ms,
                           int64_t max_ms, int *capped)
{
    int64_t v = -1;

    *capped = 0;
    if (ms_value != NULL)
        v = parse_uint(ms_value, ms_len);
    if (v < 0 && value != NULL) {
        int64_t secs = parse_uint(value, len);
        if (secs >= 0) {
            v = secs < INT64_MAX / 1000 ? secs * 1000 : INT64_MAX;
        } else if ((secs = parse_http_date(value, len)) >= 0) {
            v = secs > now_ms ? secs - now_ms : 0;
        }
    }
    if (v < 0)
        v = default_ms;
    if (v > max_ms) {
        v = max_ms;
        *capped = 1;
    }
    return v;
}

/* one unit of a Go duration: its name, nanoseconds, and the most fraction digits that stay whole nanoseconds */
struct duration_unit {
    const char *name;
    size_t len;
    int64_t ns;
    int max_frac;
};

static const struct duration_unit duration_units[] = {
    {"h", 1, 3600000000000LL, 9}, {"m", 1, 60000000000LL, 9},  {"s", 1, 1000000000LL, 9},   {"ms", 2, 1000000LL, 6},
    {"us", 2, 1000LL, 3},         {"\xc2\xb5s", 3, 1000LL, 3}, {"\xce\xbcs", 3, 1000LL, 3}, {"ns", 2, 1LL, 0},
};

/* index into duration_units of the unit at s (the longest that matches), its rank (0 h .. 5 ns), or -1 */
static int duration_unit_at(const char *s, size_t len, int *rank)
{
    static const int ranks[] = {0, 1, 2, 3, 4, 4, 4, 5};
    int i, best = -1;

    for (i = 0; i != (int)(sizeof(duration_units) / sizeof(duration_units[0])); ++i)
        if (duration_units[i].len <= len && memcmp(s, duration_units[i].name, duration_units[i].len) == 0 &&
            (best < 0 || duration_units[i].len > duration_units[best].len))
            best = i;
    if (best >= 0)
        *rank = ranks[best];
    return best;
}

int64_t aor_ratelimit_reset_ms(const char *s, size_t len)
{
    /* nanoseconds saturate here: AOR_RATELIMIT_RESET_MAX_MS, and no sum below overflows */
    const int64_t max_ns = AOR_RATELIMIT_RESET_MAX_MS * 1000000;
    int64_t total = 0;
    int last_rank = -1;
    size_t i = 0;

    if (s == NULL)
        return -1;
    while (len != 0 && (s[len - 1] == ' ' || s[len - 1] == '\t'))
        --len;
    while (len != 0 && (*s == ' ' || *s == '\t'))
        ++s, --len;
    if (len == 0 || len > AOR_RATELIMIT_RESET_MAX_LEN)
        return -1;
    if (len == 1 && s[0] == '0')
        return 0;
    while (i != len) {
        int64_t whole = 0, frac = 0, scale = 1;
        int digits = 0, frac_digits = 0, u, rank;
        const struct duration_unit *unit;

        while (i != len && s[i] >= '0' && s[i] <= '9') {
            if (++digits > 10)
                return -1;
            whole = whole * 10 + (s[i++] - '0');
        }
        if (digits == 0)
            return -1;
        if (i != len && s[i] == '.') {
            ++i;
            while (i != len && s[i] >= '0' && s[i] <= '9') {
                if (++frac_digits > 9)
                    return -1;
                frac = frac * 10 + (s[i++] - '0');
                scale *= 10;
            }
            if (frac_digits == 0)
                return -1;
        }
        if ((u = duration_unit_at(s + i, len - i, &rank)) < 0 || rank <= last_rank)
            return -1;
        unit = &duration_units[u];
        if (frac_digits > unit->max_frac)
            return -1;
        i += unit->len;
        last_rank = rank;
        /* whole < 10^10, unit->ns <= 3.6e12: compare before multiplying; the fraction is below one unit */
        if (total == max_ns || whole > (max_ns - total) / unit->ns) {
            total = max_ns;
        } else {
            total += whole * unit->ns;
            total += frac * (unit->ns / scale);
            if (total > max_ns)
                total = max_ns;
        }
    }
    return total / 1000000 + (total % 1000000 != 0);
}

int64_t aor_ratelimit_cooldown_ms(int64_t remaining_tokens, int64_t reset_tokens_ms, int64_t remaining_requests,
                                  int64_t reset_requests_ms)
{
    int64_t exhausted = -1, any = reset_tokens_ms > reset_requests_ms ? reset_tokens_ms : reset_requests_ms;

    if (remaining_tokens == 0 && reset_tokens_ms >= 0)
        exhausted = reset_tokens_ms;
    if (remaining_requests == 0 && reset_requests_ms > exhausted)
        exhausted = reset_requests_ms;
    return exhausted >= 0 ? exhausted : any >= 0 ? any : -1;
}
