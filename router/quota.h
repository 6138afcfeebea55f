/*
 * quota — the pure part of tenant admission (SPEC §6): reading a tenant's quota hash,
 * falling back to the config's `tenants:`, UTC calendar windows and their ends, and the
 * in-process counters used without Redis (and while Redis is down). No I/O, no clock:
 * every function takes `now` from its caller, so tests move the clock by hand.
 */
#ifndef AOR_QUOTA_H
#define AOR_QUOTA_H

#include <stddef.h>
#include <stdint.h>

struct aor_config;

#define AOR_QUOTA_UNLIMITED (-1)
#define AOR_QUOTA_MAX_VALUE 999999999999999LL /* 15 digits: exact in Lua's doubles too */
#define AOR_QUOTA_DEPLOYMENTS_MAX 1024        /* bytes of a `deployments` list kept */

/* which limit stopped a request (aoai_router_quota_rejections_total{limit}) */
enum aor_quota_limit { AOR_LIMIT_NONE, AOR_LIMIT_TPM, AOR_LIMIT_RPM, AOR_LIMIT_DAY, AOR_LIMIT_MONTH, AOR_LIMIT_DEPLOYMENT };

/* a tenant's effective quota. -1 = unlimited, 0 = blocked */
struct aor_quota {
    int64_t tpm, rpm, day, month;
    int disabled;
    int all_deployments;                         /* no list: every deployment */
    char deployments[AOR_QUOTA_DEPLOYMENTS_MAX]; /* comma list without blanks, when !all_deployments */
    unsigned unset; /* fields no layer named, so unlimited / all for now (1 tpm, 2 rpm, 4 day, 8 month, 16 deployments):
                       what aor_quota_fill may still give */
};

/*
 * The last fallback layer: the quota fields of the Redis hash of the tenant named `default`
 * (`<prefix>tenant:{default}`), parsed. `disabled` is not among them: it switches off the tenant
 * `default` only (README "Quotas and accounting"). Zeroed = nothing to give.
 */
struct aor_quota_layer {
    unsigned have; /* fields present and valid (1 tpm, 2 rpm, 4 day, 8 month, 16 deployments) */
    int64_t tpm, rpm, day, month;
    char deployments[AOR_QUOTA_DEPLOYMENTS_MAX]; /* comma list without blanks, when have & 16 */
};

/* the raw fields of a tenant hash, as Redis holds them; each NULL when absent */
struct aor_quota_fields {
    const char *tpm, *rpm, *day, *month, *deployments, *disabled;
    size_t tpm_len, rpm_len, day_len, month_len, deployments_len, disabled_len;
};

/* "tpm", "rpm", "day", "month", "deployment" */
const char *aor_quota_limit_name(enum aor_quota_limit l);

/*
 * A quota number from Redis: "-1" (unlimited), or 0..AOR_QUOTA_MAX_VALUE in plain decimal
 * digits. Returns 1 and sets *out when valid; 0 for anything else (empty, non-numeric,
 * negative other than -1, too large, blanks): the field then counts as absent.
 */
int aor_quota_parse_value(const char *s, size_t len, int64_t *out);

/*
 * The quota of `tenant`: each field of `f` that is valid, else the config's entry for the
 * tenant, else its `default` entry, else unlimited (and marked in q->unset for aor_quota_fill). `disabled` fails closed: empty, 0,
 * false, no (any case) → on; 1, true, yes, on → disabled; anything else → disabled and reported; a `deployments` list is kept
 * without blanks (empty or over AOR_QUOTA_DEPLOYMENTS_MAX: invalid). `f` may be NULL (no hash). Returns a bit mask of the fields
 * that were present but invalid (1 tpm, 2 rpm, 4 day, 8 month, 16 deployments, 32 disabled) so the caller can log them.
 */
unsigned aor_quota_resolve(const struct aor_config *conf, const char *tenant, const struct aor_quota_fields *f,
                           struct aor_quota *q);

/*
 * Reads the fields of the `default` tenant's hash into `out` by the rules of aor_quota_resolve
 * (a value that is not valid counts as absent; f->disabled is ignored). `f` may be NULL (no
 * hash). Returns the mask of the fields present but invalid (1 tpm, 2 rpm, 4 day, 8 month,
 * 16 deployments).
 */
unsigned aor_quota_layer_parse(const struct aor_quota_fields *f, struct aor_quota_layer *out);

/* gives each field of `q` that no layer named (q->unset) the value `d` has for it, if any; `d` may be NULL */
void aor_quota_fill(struct aor_quota *q, const struct aor_quota_layer *d);

/* q's tpm, rpm, day, month into out[4], each unset one taken from `d` when it has one (`d` may be NULL) */
void aor_quota_limits(const struct aor_quota *q, const struct aor_quota_layer *d, int64_t out[4]);

/* tenants.<T>.default_max_tokens (inherited from tenants.default), 0 when none or no config */
int64_t aor_quota_default_max_tokens(const struct aor_config *conf, const char *tenant);

/* 1 when `q` lets the tenant use `deployment` (an empty deployment — a passthrough without one — is allowed) */
int aor_quota_deployment_allowed(const struct aor_quota *q, const char *deployment);

/* the refusal a quota gives before counting anything: LIMIT_DEPLOYMENT for disabled, a 0 limit or a deployment not listed */
enum aor_quota_limit aor_quota_forbidden(const struct aor_quota *q, const char *deployment);

/* UTC calendar windows at `now_ms` (unix ms) */
struct aor_quota_windows {
    char minute[13], day[9], month[7];   /* YYYYMMDDHHMM, YYYYMMDD, YYYYMM */
    int64_t minute_id, day_id, month_id; /* monotonic numbers of the windows */
    int64_t minute_end_ms, day_end_ms, month_end_ms;
};
void aor_quota_windows(int64_t now_ms, struct aor_quota_windows *w);

/* whole seconds from now until `end_ms`, rounded up, at least 1 (SPEC §6 retry-after) */
int64_t aor_quota_retry_after(int64_t now_ms, int64_t end_ms);

/*
 * In-process counters of one tenant (no Redis, or Redis down): tokens and requests of the
 * current windows, reservations included. Zeroed = nothing counted.
 */
struct aor_quota_counters {
    int64_t minute_id, minute_tokens, minute_requests;
    int64_t day_id, day_tokens;
    int64_t month_id, month_tokens;
};

/*
 * Reserves `estimate` tokens and one request when every limit allows it. Windows that
 * changed since the counters were last touched start from zero. Returns AOR_LIMIT_NONE
 * (counted; *remaining_tokens / *remaining_requests set for the minute window, -1 when
 * unlimited) or the limit that refused (nothing counted; *retry_after_s set).
 */
enum aor_quota_limit aor_quota_local_reserve(struct aor_quota_counters *c, const struct aor_quota *q,
                                             const struct aor_quota_windows *w, int64_t now_ms, int64_t estimate,
                                             int64_t *remaining_tokens, int64_t *remaining_requests, int64_t *retry_after_s);

/*
 * Replaces a reservation made in the windows `at` by `actual` tokens (actual < 0: release,
 * the request is not counted either). A window that has ended since is left alone.
 */
void aor_quota_local_settle(struct aor_quota_counters *c, const struct aor_quota_windows *at, int64_t estimate, int64_t actual);

#endif
