/*
 * balancer.c — see balancer.h. Fields of struct aor_backend_state are read and
 * written with relaxed atomics: workers race benignly (two 429s may both set a
 * cooldown; the later end wins), and no decision needs more than one field to be
 * consistent with another except the half-open probe, which is claimed by CAS.
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
    st->remaining_tokens = -1;
}

int aor_balancer_cooling(const struct aor_backend_state *st, int64_t now_ms)
{
    return LOAD(&st->cooldown_until_ms) > now_ms;
}

int aor_balancer_circuit_open(const struct aor_backend_state *st, int64_t now_ms)
{
    return LOAD(&st->circuit_open_until_ms) > now_ms;
}

double aor_balancer_headroom(const struct aor_backend_state *st, uint64_t tpm, int64_t now_ms)
{
    int64_t est = INT64_MAX, sent_minute = 0, remaining = LOAD(&st->remaining_tokens);
    double f;

    if (LOAD(&st->minute) == now_ms / MINUTE_MS)
        sent_minute = LOAD(&st->sent_minute);
    if (tpm > 0)
        est = (int64_t)tpm - sent_minute;
    /* a report older than a minute describes a window that has since reset */
    if (remaining >= 0 && now_ms - LOAD(&st->remaining_at_ms) < MINUTE_MS) {
        int64_t r = remaining - LOAD(&st->sent_since_report);
        if (r < est)
            est = r;
    }
    if (est == INT64_MAX)
        return 1.0;
    if (tpm > 0)
        f = (double)est / (double)tpm;
    else
        f = est > 0 ? 1.0 : 0.0;
    /* an exhausted backend stays a (rare) choice: its next answer refreshes the figure */
    if (f < 0.01)
        f = 0.01;
    if (f > 1.0)
        f = 1.0;
    return f;
}

static int eligible(struct aor_balancer_candidate *c, int64_t now_ms, int64_t *earliest)
{
    int64_t until, open_until;

    if (c->tried)
        return 0;
    until = LOAD(&c->state->cooldown_until_ms);
    if (until > now_ms) {
        if (*earliest == 0 || until < *earliest)
            *earliest = until;
        return 0;
    }
    open_until = LOAD(&c->state->circuit_open_until_ms);
    if (open_until > now_ms)
        return 0;
    if (open_until != 0 && LOAD(&c->state->probe_in_flight))
        return 0;
    return 1;
}

int aor_balancer_pick(struct aor_balancer_candidate *c, size_t n, int64_t now_ms, uint32_t rnd, int64_t *earliest_cooldown_end_ms)
{
    char skip[64] = {0}; /* probes lost to another worker during this pick */

    *earliest_cooldown_end_ms = 0;
    if (n > sizeof(skip))
        n = sizeof(skip);
    for (;;) {
        int best_prio = 0, found = 0, chosen = -1;
        double total = 0, r, acc = 0;
        size_t i;

        for (i = 0; i != n; ++i) {
            if (skip[i] || !eligible(&c[i], now_ms, earliest_cooldown_end_ms))
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
            if (!skip[i] && c[i].priority == best_prio && eligible(&c[i], now_ms, &dummy))
                total += c[i].weight * aor_balancer_headroom(c[i].state, c[i].tpm, now_ms);
        }
        r = (double)rnd / 4294967296.0 * total;
        for (i = 0; i != n; ++i) {
            int64_t dummy = 0;
            if (skip[i] || c[i].priority != best_prio || !eligible(&c[i], now_ms, &dummy))
                continue;
            chosen = (int)i;
            acc += c[i].weight * aor_balancer_headroom(c[i].state, c[i].tpm, now_ms);
            if (r < acc)
                break;
        }
        if (LOAD(&c[chosen].state->circuit_open_until_ms) == 0)
            return chosen;
        {
            /* half-open: exactly one request probes the backend */
            int expected = 0;
            if (__atomic_compare_exchange_n(&c[chosen].state->probe_in_flight, &expected, 1, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
                return chosen;
        }
        skip[chosen] = 1;
    }
}

void aor_balancer_record(struct aor_backend_state *st, const struct aor_balancer_policy *pol, enum aor_balancer_outcome outcome,
                         int64_t cooldown_ms, int64_t now_ms)
{
    switch (outcome) {
    case AOR_OUTCOME_THROTTLED: {
        int64_t until = now_ms + cooldown_ms;
        if (until > LOAD(&st->cooldown_until_ms))
            STORE(&st->cooldown_until_ms, until);
    }
        /* a 429 proves the backend is up: it closes the circuit like a success */
        /* fallthrough */
    case AOR_OUTCOME_SUCCESS:
        STORE(&st->consecutive_failures, 0);
        STORE(&st->circuit_open_until_ms, 0);
        STORE(&st->probe_in_flight, 0);
        break;
    case AOR_OUTCOME_FAILURE: {
        int failures = __atomic_add_fetch(&st->consecutive_failures, 1, __ATOMIC_RELAXED);
        int64_t open_until = LOAD(&st->circuit_open_until_ms);
        if (open_until != 0 || failures >= (int)pol->circuit_failures) {
            /* the threshold was reached, or the half-open probe failed: (re)open */
            STORE(&st->circuit_open_until_ms, now_ms + (int64_t)pol->circuit_open_ms);
            STORE(&st->probe_in_flight, 0);
        }
    } break;
    }
}

void aor_balancer_report_remaining(struct aor_backend_state *st, int64_t remaining, int64_t now_ms)
{
    STORE(&st->remaining_tokens, remaining);
    STORE(&st->remaining_at_ms, now_ms);
    STORE(&st->sent_since_report, 0);
}

void aor_balancer_add_sent(struct aor_backend_state *st, int64_t tokens, int64_t now_ms)
{
    int64_t minute = now_ms / MINUTE_MS;

    if (LOAD(&st->minute) != minute) {
        STORE(&st->minute, minute);
        STORE(&st->sent_minute, 0);
    }
    __atomic_add_fetch(&st->sent_minute, tokens, __ATOMIC_RELAXED);
    __atomic_add_fetch(&st->sent_since_report, tokens, __ATOMIC_RELAXED);
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
