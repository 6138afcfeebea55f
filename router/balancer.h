/*
 * balancer — which backend gets the next attempt (SPEC §5), and what a result
 * does to a backend's standing: 429 cooldown, circuit breaker, TPM headroom.
 * Pure: every function takes `now_ms` and a random number, so tests move the clock
 * by hand. State is shared by all workers through relaxed atomics.
 */
#ifndef AOR_BALANCER_H
#define AOR_BALANCER_H

#include <stddef.h>
#include <stdint.h>

/* one per backend name for the life of the process; survives config reloads */
struct aor_backend_state {
    int64_t cooldown_until_ms;     /* 429: skipped until then */
    int64_t circuit_open_until_ms; /* 0 = closed; else open until then, then one probe */
    int consecutive_failures;      /* 5xx, connect errors, timeouts in a row */
    int probe_in_flight;           /* half-open: the one probe has been handed out */
    int64_t remaining_tokens;      /* last x-ratelimit-remaining-tokens, -1 unknown */
    int64_t remaining_at_ms;       /* when it was reported */
    int64_t sent_since_report;     /* tokens the router sent since that report */
    int64_t minute;                /* minute index (now_ms / 60000) of sent_minute */
    int64_t sent_minute;           /* tokens the router sent this minute */
};

struct aor_balancer_candidate {
    struct aor_backend_state *state;
    int priority;
    unsigned weight;
    uint64_t tpm; /* 0 = unknown */
    int tried;    /* excluded from this pick (already attempted for this request) */
};

enum aor_balancer_outcome {
    AOR_OUTCOME_SUCCESS,   /* any answer that is not 429/5xx */
    AOR_OUTCOME_THROTTLED, /* 429 */
    AOR_OUTCOME_FAILURE,   /* 5xx, connect error, timeout */
};

struct aor_balancer_policy {
    unsigned circuit_failures;
    uint64_t circuit_open_ms;
};

void aor_balancer_state_init(struct aor_backend_state *st);

/**
 * Picks among candidates not `tried`: the lowest priority that has an eligible backend
 * (not cooling down, circuit closed or its half-open probe still free), then at random
 * in proportion to weight x headroom. Claims the half-open probe of the backend it
 * returns. `rnd` is a uniformly random 32-bit number.
 * Returns the index, or -1 when none is eligible; then *earliest_cooldown_end_ms is the
 * earliest end of a cooldown among the untried candidates (0 if none is cooling down).
 */
int aor_balancer_pick(struct aor_balancer_candidate *c, size_t n, int64_t now_ms, uint32_t rnd, int64_t *earliest_cooldown_end_ms);

/* headroom factor in [0.01, 1] used by the pick (exported for tests and metrics) */
double aor_balancer_headroom(const struct aor_backend_state *st, uint64_t tpm, int64_t now_ms);

/**
 * Records the end of an attempt. THROTTLED starts a cooldown of `cooldown_ms`;
 * FAILURE counts towards the circuit; SUCCESS closes it.
 */
void aor_balancer_record(struct aor_backend_state *st, const struct aor_balancer_policy *pol, enum aor_balancer_outcome outcome,
                         int64_t cooldown_ms, int64_t now_ms);

/* the backend reported x-ratelimit-remaining-tokens */
void aor_balancer_report_remaining(struct aor_backend_state *st, int64_t remaining, int64_t now_ms);
/* the router sent (or learned it spent) `tokens` on this backend */
void aor_balancer_add_sent(struct aor_backend_state *st, int64_t tokens, int64_t now_ms);

/* 1 while a 429 cooldown runs; 1 while the circuit is open (probe time not reached) */
int aor_balancer_cooling(const struct aor_backend_state *st, int64_t now_ms);
int aor_balancer_circuit_open(const struct aor_backend_state *st, int64_t now_ms);

/**
 * Cooldown of a 429 from its headers (either may be NULL): `retry-after-ms` (milliseconds)
 * wins over `retry-after` (delta-seconds or an HTTP-date); neither or unparsable gives
 * `default_ms`. The result is clamped to [0, max_ms]; *capped is set when it was clamped
 * from above (the caller logs it).
 */
int64_t aor_retry_after_ms(const char *ms_value, size_t ms_len, const char *value, size_t len, int64_t now_ms, int64_t default_ms,
                           int64_t max_ms, int *capped);

#endif
