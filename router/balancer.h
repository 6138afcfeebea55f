/*
 * balancer — which backend gets the next attempt (SPEC §5), and what a result does to
 * a backend's standing: the circuit breaker per backend; the 429 cooldown and the TPM
 * headroom per backend deployment (Azure enforces TPM/RPM per deployment).
 * Pure: every function takes `now_ms` and a random number, so tests move the clock
 * by hand. State is shared by all workers through relaxed atomics; every figure that
 * comes from a client, a backend or another replica is clamped before it is stored.
 */
#ifndef AOR_BALANCER_H
#define AOR_BALANCER_H

#include <stddef.h>
#include <stdint.h>

/* an estimate or a reported token count is clamped to this (a request's worth, never more) */
#define AOR_BALANCER_MAX_TOKENS 1000000000LL
/* counters of tokens sent saturate here: far beyond any TPM, far below INT64_MAX */
#define AOR_BALANCER_MAX_SENT 1000000000000000LL

/* one per backend: the circuit breaker. Lives as long as the process (backend.c) */
struct aor_backend_state {
    int64_t circuit_open_until_ms; /* 0 = closed; else open until then, then one probe */
    int consecutive_failures;      /* 5xx, connect errors, timeouts in a row */
    int64_t probe_until_ms;        /* half-open: 0 = the probe is free; else claimed, the claim lapses then */
    uint64_t failovers;            /* attempts on this backend abandoned for another (the status page) */
};

/* one per backend deployment (the name on that backend): cooldown and headroom */
struct aor_deployment_state {
    int64_t cooldown_until_ms;     /* 429: skipped until then */
    int64_t remaining_tokens;      /* last x-ratelimit-remaining-tokens, -1 unknown */
    int64_t remaining_at_ms;       /* when it was reported */
    int64_t sent_since_report;     /* tokens the router sent since that report, in [0, AOR_BALANCER_MAX_SENT] */
    int64_t minute;                /* minute index (now_ms / 60000) of sent_minute */
    int64_t sent_minute;           /* tokens the router sent this minute, in [0, AOR_BALANCER_MAX_SENT] */
    int64_t remaining_until_ms;    /* the remaining_tokens report holds until then (its reset, at most a minute) */
    int64_t requests_out_until_ms; /* the backend said no requests are left: the floor of headroom until then */
    int64_t requests_minute;       /* attempts the router sent in that minute (the status page) */
    int64_t remaining_requests;    /* last x-ratelimit-remaining-requests, -1 unknown (the status page) */
    int cooldown_shared;           /* the cooldown end came from another replica (Redis), not a 429 seen here */
};

struct aor_balancer_candidate {
    struct aor_backend_state *state;  /* the backend's circuit */
    struct aor_deployment_state *dep; /* the deployment on that backend: cooldown, headroom */
    int priority;
    unsigned weight;
    uint64_t tpm; /* 0 = unknown */
    int tried;    /* excluded from this pick (already attempted for this request) */
    /* set by the pick and the charge calls; the caller hands them back when the attempt ends */
    int64_t probe;   /* the half-open probe claim this candidate holds (0: none) */
    int64_t charged; /* tokens charged to dep for the running attempt */
    int64_t charged_minute;
};

enum aor_balancer_outcome {
    AOR_OUTCOME_SUCCESS,   /* any answer that is not 429/5xx */
    AOR_OUTCOME_THROTTLED, /* 429 */
    AOR_OUTCOME_FAILURE,   /* 5xx, connect error, timeout */
};

struct aor_balancer_policy {
    unsigned circuit_failures;
    uint64_t circuit_open_ms;
    uint64_t probe_lease_ms;  /* a probe claim lapses after this (the longest an attempt can last) */
    uint64_t max_cooldown_ms; /* no cooldown ends later than now + this */
};

void aor_balancer_state_init(struct aor_backend_state *st);
void aor_balancer_deployment_init(struct aor_deployment_state *dep);

/**
 * Picks among candidates not `tried`: the lowest priority that has an eligible backend
 * (deployment not cooling down, circuit closed or its half-open probe free), then at random
 * in proportion to weight x headroom. `rnd` is a uniformly random 32-bit number.
 * Returns the index, or -1 when none is eligible; then *earliest_cooldown_end_ms is the
 * earliest end of a cooldown among the untried candidates (0 if none is cooling down).
 * When the chosen backend is half-open, the pick claims its one probe and stores the claim
 * in c[i].probe: the caller must end it with aor_balancer_record() or
 * aor_balancer_release_probe() however the attempt ends (an unreleased claim lapses after
 * pol->probe_lease_ms).
 */
int aor_balancer_pick(struct aor_balancer_candidate *c, size_t n, const struct aor_balancer_policy *pol, int64_t now_ms,
                      uint32_t rnd, int64_t *earliest_cooldown_end_ms);

/* headroom factor in [0.01, 1] used by the pick (exported for tests and metrics) */
double aor_balancer_headroom(const struct aor_deployment_state *dep, uint64_t tpm, int64_t now_ms);

/**
 * Records the result of c's attempt: THROTTLED starts a cooldown of `cooldown_ms` (capped at
 * pol->max_cooldown_ms) on c->dep; FAILURE counts towards c->state's circuit; SUCCESS and
 * THROTTLED close it. Ends c's probe claim either way.
 */
void aor_balancer_record(struct aor_balancer_candidate *c, const struct aor_balancer_policy *pol, enum aor_balancer_outcome outcome,
                         int64_t cooldown_ms, int64_t now_ms);

/* the attempt of c ended without a result (cancelled, refused before it started): its probe claim, if any, is freed */
void aor_balancer_release_probe(struct aor_balancer_candidate *c);

/**
 * Charges c's attempt with `estimate` tokens (clamped to [0, AOR_BALANCER_MAX_TOKENS] and to
 * c->tpm when known) on c->dep, as tokens sent this minute. The charge is ended by
 * aor_balancer_settle(): `actual` < 0 takes it back (the attempt spent nothing we know of:
 * refused, cancelled, failed), otherwise replaces it by `actual` (clamped the same way). A
 * charge made in an earlier minute is not taken from this one. Settling twice is a no-op.
 */
void aor_balancer_charge(struct aor_balancer_candidate *c, int64_t estimate, int64_t now_ms);
void aor_balancer_settle(struct aor_balancer_candidate *c, int64_t actual, int64_t now_ms);

/**
 * The backend reported x-ratelimit-remaining-tokens for this deployment (clamped to [0,
 * AOR_BALANCER_MAX_SENT]); `reset_ms` is its x-ratelimit-reset-tokens (-1 unknown): the
 * report holds that long, at most a minute (a token bucket has refilled a minute's worth
 * by then).
 */
void aor_balancer_report_remaining(struct aor_deployment_state *dep, int64_t remaining, int64_t reset_ms, int64_t now_ms);

/**
 * The backend reported x-ratelimit-remaining-requests (`remaining` < 0: not reported) with
 * x-ratelimit-reset-requests `reset_ms` (-1 unknown): 0 left puts the deployment's headroom
 * at its floor until the reset (at most a minute; unknown: a minute); any other figure lifts it.
 */
void aor_balancer_report_requests(struct aor_deployment_state *dep, int64_t remaining, int64_t reset_ms, int64_t now_ms);

/* tokens and attempts the router sent to `dep` in the minute of `now_ms` (0 when that minute has not been counted) */
void aor_balancer_minute_sent(const struct aor_deployment_state *dep, int64_t now_ms, int64_t *tokens, int64_t *requests);

/**
 * Adopts a cooldown end another replica published (unix ms): values not later than now are
 * ignored, later ones are capped at now + max_cooldown_ms; the later of that and the local
 * end wins. Returns 1 when the local end moved.
 */
int aor_balancer_adopt_cooldown(struct aor_deployment_state *dep, int64_t until_ms, int64_t now_ms, int64_t max_cooldown_ms);

/* a configuration change: a cooldown may not end later than now + max_cooldown_ms */
void aor_balancer_cap_cooldown(struct aor_deployment_state *dep, int64_t now_ms, int64_t max_cooldown_ms);

/* 1 while a 429 cooldown runs on the deployment; 1 while the backend's circuit is open (probe time not reached) */
int aor_balancer_cooling(const struct aor_deployment_state *dep, int64_t now_ms);
int aor_balancer_circuit_open(const struct aor_backend_state *st, int64_t now_ms);

/**
 * Cooldown of a 429 from its headers (either may be NULL): `retry-after-ms` (milliseconds)
 * wins over `retry-after` (delta-seconds or an HTTP-date); neither or unparsable gives
 * `default_ms`. The result is clamped to [0, max_ms]; *capped is set when it was clamped
 * from above (the caller logs it).
 */
int64_t aor_retry_after_ms(const char *ms_value, size_t ms_len, const char *value, size_t len, int64_t now_ms, int64_t default_ms,
                           int64_t max_ms, int *capped);

/* aor_ratelimit_reset_ms() saturates here (~31 years): far beyond any max_cooldown_ms */
#define AOR_RATELIMIT_RESET_MAX_MS 1000000000000LL
/* a longer header value is not a duration OpenAI sends */
#define AOR_RATELIMIT_RESET_MAX_LEN 96

/**
 * OpenAI's x-ratelimit-reset-tokens / x-ratelimit-reset-requests: a Go duration as Go prints
 * it ("6m0s", "1s", "20ms", "1h2m3.5s", "0s"): components <digits>[.<digits>]<unit>, units
 * h m s ms us/µs ns each at most once and in that order, 1..10 integer digits, a fraction no
 * finer than a nanosecond (9 digits for h/m/s, 6 for ms, 3 for us, none for ns); "0" alone;
 * blanks around the value. Returns milliseconds rounded up, saturated at
 * AOR_RATELIMIT_RESET_MAX_MS, or -1 for anything else (a bare number, a sign, an exponent,
 * a unit twice or out of order, control bytes, longer than AOR_RATELIMIT_RESET_MAX_LEN).
 */
int64_t aor_ratelimit_reset_ms(const char *s, size_t len);

/**
 * How long a 429 without a usable retry-after cools a deployment down, from OpenAI's headers
 * (each -1 when absent or unparsable): the reset of the limit reported exhausted (remaining
 * 0), the later of the two when both are; when neither is reported exhausted, the later reset
 * given. -1 when no usable reset applies (the caller uses its default).
 */
int64_t aor_ratelimit_cooldown_ms(int64_t remaining_tokens, int64_t reset_tokens_ms, int64_t remaining_requests,
                                  int64_t reset_requests_ms);

/**
 * A cooldown end as another replica stored it in Redis: unix ms in decimal digits only.
 * Returns the value, INT64_MAX for a digit string too large for int64 (absurd: the caller
 * caps it), or -1 when it is not a non-negative decimal integer.
 */
int64_t aor_balancer_parse_until(const char *s, size_t len);

#endif
