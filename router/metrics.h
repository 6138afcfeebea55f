/*
 * metrics — the Prometheus series of SPEC §7, served as text at /metrics. Each thread
 * counts into a shard of its own (its own mutex, uncontended except while a scrape reads
 * it; no process-wide lock or table on the request path once the thread has met the series);
 * a scrape sums the shards. The number of distinct series is bounded process-wide
 * (AOR_METRICS_MAX_SERIES) so a flood of tenant names cannot grow memory without limit
 * (excess updates are counted, not stored).
 */
#ifndef AOR_METRICS_H
#define AOR_METRICS_H

#include <stddef.h>
#include <stdint.h>

#define AOR_METRICS_MAX_SERIES 20000
#define AOR_METRICS_MAX_TENANTS 1000 /* default of metrics.max_tenants: distinct tenant label values */
/* the largest metrics.max_tenants accepted: at 100,000 one /metrics was 62 MB, up to 1 s of a worker */
#define AOR_METRICS_MAX_TENANTS_LIMIT 10000
#define AOR_METRICS_MAX_DYNAMIC_DEPLOYMENTS 100 /* distinct names served by map-less backends; later ones "other" */
#define AOR_METRICS_OTHER "other"

struct aor_config;
struct aor_quota_windows;

/* how many tenant label values may exist (metrics.max_tenants; at load and reload). Names already
 * seen keep theirs when it shrinks; new ones beyond it are "other". Any thread */
void aor_metrics_set_max_tenants(size_t max);

/*
 * Label values (SPEC §7, issue 6 item 4): only from the configuration or from bounded sets.
 * aor_metrics_tenant_label: "" for NULL/"" (a request refused before it was authenticated),
 * the tenant while fewer than AOR_METRICS_MAX_TENANTS distinct ones were seen, else "other".
 * aor_metrics_deployment_label: a logical name some backend's deployments map has; otherwise,
 * for an authenticated request a map-less backend served, the name while fewer than
 * AOR_METRICS_MAX_DYNAMIC_DEPLOYMENTS distinct ones were seen, else "other"; anything else "".
 * The strings returned live until aor_metrics_free() (or are `logical` itself). Any thread.
 * The counters below apply aor_metrics_tenant_label() to their `tenant` themselves.
 */
const char *aor_metrics_tenant_label(const char *tenant);
const char *aor_metrics_deployment_label(const struct aor_config *conf, const char *logical, int authenticated_and_served);

/* counters (label values are copied; NULL counts as "") */
void aor_metrics_request(const char *tenant, const char *deployment, const char *backend, int code);
void aor_metrics_tokens(const char *tenant, const char *deployment, const char *backend, int64_t prompt, int64_t completion);
void aor_metrics_failover(const char *backend, const char *reason);
void aor_metrics_quota_rejection(const char *tenant, const char *limit);
void aor_metrics_auth_failure(const char *reason);

/*
 * Per tenant with a label of its own (not "other"): its quota and the usage of its current windows
 * as the admit stage last learnt them (the reserve script's reply, or the in-process counters),
 * index 0 tpm (tokens this minute), 1 rpm (requests this minute), 2 tokens_per_day, 3
 * tokens_per_month; `w` names the windows `used` belongs to. limit -1 = unlimited.
 * aor_metrics_tenant_quota takes the tenant set's lock once and returns the tenant's record
 * (NULL for "other"), valid until aor_metrics_free(); aor_metrics_tenant_settle applies a
 * settle to it the way aor_quota_local_settle does (actual < 0: released, the request not
 * counted) with relaxed atomics, no lock; `ref` NULL is a no-op. Any thread.
 */
struct aor_metrics_tenant_ref;
struct aor_metrics_tenant_ref *aor_metrics_tenant_quota(const char *tenant, const int64_t limit[4], const int64_t used[4],
                                                        const struct aor_quota_windows *w);
void aor_metrics_tenant_settle(struct aor_metrics_tenant_ref *ref, const struct aor_quota_windows *at, int64_t estimate,
                               int64_t actual);

/* one tenant as aor_metrics_tenants() copies it */
struct aor_metrics_tenant {
    char name[129];
    int have_quota;         /* aor_metrics_tenant_quota was called: limit/used are known */
    int64_t limit[4];       /* as above; -1 unlimited */
    int64_t used[4];        /* 0 for a window that has ended since */
    uint64_t tokens;        /* prompt + completion tokens the backends reported */
    uint64_t rejections[5]; /* tpm, rpm, day, month, deployment (aoai_router_quota_rejections_total) */
};

/* a malloc'd copy of every tenant with a label of its own, as of `now_ms` (*n set; NULL when none or ENOMEM) */
struct aor_metrics_tenant *aor_metrics_tenants(int64_t now_ms, size_t *n);

/* histograms, in seconds */
void aor_metrics_request_duration(const char *deployment, const char *backend, double seconds);
void aor_metrics_upstream_duration(const char *backend, double seconds);
void aor_metrics_ttfb(const char *backend, double seconds);

/*
 * OpenTelemetry GenAI series beside ours (README "Metrics"): gen_ai_client_token_usage{
 * gen_ai_operation_name, gen_ai_request_model, gen_ai_token_type} (one input and one output
 * observation per request whose usage is counted in aoai_router_tokens_total; embeddings
 * without output tokens observe input only) and gen_ai_server_time_to_first_token_seconds{
 * gen_ai_operation_name, gen_ai_request_model} (successful streams). `deployment` must be a
 * bounded label value (aor_metrics_deployment_label); `operation` one that
 * aor_metrics_genai_operation returned: chat (chat/completions, responses), text_completion,
 * embeddings, or "other".
 */
const char *aor_metrics_genai_operation(const char *op, size_t len);
void aor_metrics_genai_tokens(const char *operation, const char *deployment, int64_t input, int64_t output);
void aor_metrics_genai_ttft(const char *operation, const char *deployment, double seconds);

/* the in-flight gauge */
void aor_metrics_inflight_add(int delta);

/* hostile-client counters (relaxed atomics, no registry): client connections closed for their
 * resets, requests refused by the in-flight body budget. (Dropped log lines: log.h.) */
void aor_metrics_conn_reset_closed(void);
void aor_metrics_overloaded(void);

/**
 * Renders every series, plus the gauges of `conf`'s backends as of `now_ms` (per backend
 * deployment: cooldown, remaining tokens; per backend: circuit) and of the tenants with a label of
 * their own (aoai_router_tenant_quota_limit / _used), in Prometheus text format
 * 0.0.4. Each thread's shard is locked only while its series are added up. Returns a malloc'd
 * string (*len set), or NULL on ENOMEM; the caller frees it.
 */
char *aor_metrics_render(const struct aor_config *conf, int64_t now_ms, size_t *len);

/* frees the registry and every thread's shard (at exit, after the threads that update metrics
 * are done; a thread that updates later starts a new shard) */
void aor_metrics_free(void);

#endif
