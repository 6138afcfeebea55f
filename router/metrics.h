/*
 * metrics — the Prometheus series of SPEC §7, kept in one process-wide registry and
 * served as text at /metrics. Updates take one uncontended-in-practice mutex; the
 * number of series is bounded (AOR_METRICS_MAX_SERIES) so a flood of tenant names
 * cannot grow memory without limit (excess updates are counted, not stored).
 */
#ifndef AOR_METRICS_H
#define AOR_METRICS_H

#include <stddef.h>
#include <stdint.h>

#define AOR_METRICS_MAX_SERIES 20000

struct aor_config;

/* counters (label values are copied; NULL counts as "") */
void aor_metrics_request(const char *tenant, const char *deployment, const char *backend, int code);
void aor_metrics_tokens(const char *tenant, const char *deployment, const char *backend, int64_t prompt, int64_t completion);
void aor_metrics_failover(const char *backend, const char *reason);
void aor_metrics_quota_rejection(const char *tenant, const char *limit);
void aor_metrics_auth_failure(const char *reason);
void aor_metrics_redis_error(void);

/* histograms, in seconds */
void aor_metrics_request_duration(const char *deployment, const char *backend, double seconds);
void aor_metrics_upstream_duration(const char *backend, double seconds);
void aor_metrics_ttfb(const char *backend, double seconds);

/* the in-flight gauge */
void aor_metrics_inflight_add(int delta);

/* hostile-client counters (relaxed atomics, no registry): client connections closed for their
 * resets, requests refused by the in-flight body budget. (Dropped log lines: log.h.) */
void aor_metrics_conn_reset_closed(void);
void aor_metrics_overloaded(void);

/**
 * Renders every series, plus the per-backend gauges of `conf` (cooldown, remaining
 * tokens) as of `now_ms`, in Prometheus text format 0.0.4. Returns a malloc'd string
 * (*len set), or NULL on ENOMEM; the caller frees it.
 */
char *aor_metrics_render(const struct aor_config *conf, int64_t now_ms, size_t *len);

/* frees the registry (at exit) */
void aor_metrics_free(void);

#endif
