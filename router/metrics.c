/* metrics.c — see metrics.h. An open-addressing hash table of series keyed by
 * (metric, label values); rendering sorts nothing: series come out grouped by metric. */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "balancer.h"
#include "config.h"
#include "log.h"
#include "metrics.h"

enum metric {
    M_REQUESTS,
    M_TOKENS,
    M_FAILOVERS,
    M_QUOTA_REJECTIONS,
    M_AUTH_FAILURES,
    M_REQUEST_DURATION,
    M_UPSTREAM_DURATION,
    M_TTFB,
    M_NUM
};

static const struct {
    const char *name, *help, *type;
    const char *labels[4];
} metric_defs[M_NUM] = {
    [M_REQUESTS] = {"aoai_router_requests_total",
                    "Requests answered, by final status code.",
                    "counter",
                    {"tenant", "deployment", "backend", "code"}},
    [M_TOKENS] = {"aoai_router_tokens_total",
                  "Tokens reported by backends.",
                  "counter",
                  {"tenant", "deployment", "backend", "type"}},
    [M_FAILOVERS] = {"aoai_router_failovers_total", "Attempts abandoned for another backend.", "counter", {"backend", "reason"}},
    [M_QUOTA_REJECTIONS] = {"aoai_router_quota_rejections_total",
                            "Requests refused by tenant quota.",
                            "counter",
                            {"tenant", "limit"}},
    [M_AUTH_FAILURES] = {"aoai_router_auth_failures_total", "Requests refused by client authentication.", "counter", {"reason"}},
    [M_REQUEST_DURATION] = {"aoai_router_request_duration_seconds",
                            "Whole request duration.",
                            "histogram",
                            {"deployment", "backend"}},
    [M_UPSTREAM_DURATION] = {"aoai_router_upstream_duration_seconds",
                             "Duration of the answering upstream attempt.",
                             "histogram",
                             {"backend"}},
    [M_TTFB] = {"aoai_router_time_to_first_byte_seconds", "Time to the first streamed byte.", "histogram", {"backend"}},
};

static const double buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
#define NUM_BUCKETS (sizeof(buckets) / sizeof(buckets[0]))

struct series {
    enum metric metric;
    char *labels; /* rendered: tenant="t",code="200" */
    uint64_t hash;
    double sum;
    uint64_t count;               /* counter value, or histogram count */
    uint64_t bucket[NUM_BUCKETS]; /* histograms only (non-cumulative) */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct series **table;
static size_t table_cap, num_series;
static uint64_t dropped, redis_errors;
static int64_t inflight;

static uint64_t hash_bytes(uint64_t h, const char *s, size_t len)
{
    size_t i;
    for (i = 0; i != len; ++i)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

/* label values are escaped per the text format: backslash, quote, newline */
static size_t render_labels(enum metric m, const char *const *values, char *buf, size_t cap)
{
    size_t n = 0, i;

    /* on every request path (several series per request): no printf */
    for (i = 0; i != 4 && metric_defs[m].labels[i] != NULL; ++i) {
        const char *v = values[i] != NULL ? values[i] : "", *name = metric_defs[m].labels[i];
        size_t name_len = strlen(name);
        if (n + name_len + 3 >= cap)
            break;
        if (i != 0)
            buf[n++] = ',';
        memcpy(buf + n, name, name_len);
        n += name_len;
        buf[n++] = '=';
        buf[n++] = '"';
        for (; *v != '\0' && n + 4 < cap; ++v) {
            if (*v == '\\' || *v == '"')
                buf[n++] = '\\', buf[n++] = *v;
            else if (*v == '\n')
                buf[n++] = '\\', buf[n++] = 'n';
            else
                buf[n++] = *v;
        }
        if (n + 1 < cap)
            buf[n++] = '"';
    }
    if (n >= cap)
        n = cap - 1;
    buf[n] = '\0';
    return n;
}

static int grow(void)
{
    size_t cap = table_cap == 0 ? 256 : table_cap * 2, i;
    struct series **t = calloc(cap, sizeof(*t));

    if (t == NULL)
        return -1;
    for (i = 0; i != table_cap; ++i) {
        if (table[i] != NULL) {
            size_t j = table[i]->hash & (cap - 1);
            while (t[j] != NULL)
                j = (j + 1) & (cap - 1);
            t[j] = table[i];
        }
    }
    free(table);
    table = t;
    table_cap = cap;
    return 0;
}

/* the series for (m, labels), created when new; NULL when the bound is reached. Call locked. */
static struct series *lookup(enum metric m, const char *labels, size_t len)
{
    uint64_t h = hash_bytes(14695981039346656037ull ^ (uint64_t)m, labels, len);
    size_t j;
    struct series *s;

    if (table_cap == 0 && grow() != 0)
        return NULL;
    for (j = h & (table_cap - 1); table[j] != NULL; j = (j + 1) & (table_cap - 1))
        if (table[j]->hash == h && table[j]->metric == m && strcmp(table[j]->labels, labels) == 0)
            return table[j];
    if (num_series >= AOR_METRICS_MAX_SERIES)
        return NULL;
    if ((s = calloc(1, sizeof(*s))) == NULL || (s->labels = strdup(labels)) == NULL) {
        free(s);
        return NULL;
    }
    s->metric = m;
    s->hash = h;
    table[j] = s;
    if (++num_series * 2 > table_cap)
        grow();
    return s;
}

static void add(enum metric m, const char *const *values, uint64_t delta, int observe, double value)
{
    char labels[1024];
    size_t len = render_labels(m, values, labels, sizeof(labels));
    struct series *s;
    size_t b;

    pthread_mutex_lock(&lock);
    if ((s = lookup(m, labels, len)) == NULL) {
        ++dropped;
    } else if (!observe) {
        s->count += delta;
    } else {
        ++s->count;
        s->sum += value;
        for (b = 0; b != NUM_BUCKETS; ++b)
            if (value <= buckets[b]) {
                ++s->bucket[b];
                break;
            }
    }
    pthread_mutex_unlock(&lock);
}

void aor_metrics_request(const char *tenant, const char *deployment, const char *backend, int code)
{
    char c[12];
    const char *v[4] = {tenant, deployment, backend, c};
    snprintf(c, sizeof(c), "%d", code);
    add(M_REQUESTS, v, 1, 0, 0);
}

void aor_metrics_tokens(const char *tenant, const char *deployment, const char *backend, int64_t prompt, int64_t completion)
{
    const char *p[4] = {tenant, deployment, backend, "prompt"}, *c[4] = {tenant, deployment, backend, "completion"};
    if (prompt > 0)
        add(M_TOKENS, p, (uint64_t)prompt, 0, 0);
    if (completion > 0)
        add(M_TOKENS, c, (uint64_t)completion, 0, 0);
}

void aor_metrics_failover(const char *backend, const char *reason)
{
    const char *v[4] = {backend, reason};
    add(M_FAILOVERS, v, 1, 0, 0);
}

void aor_metrics_quota_rejection(const char *tenant, const char *limit)
{
    const char *v[4] = {tenant, limit};
    add(M_QUOTA_REJECTIONS, v, 1, 0, 0);
}

void aor_metrics_auth_failure(const char *reason)
{
    const char *v[4] = {reason};
    add(M_AUTH_FAILURES, v, 1, 0, 0);
}

void aor_metrics_redis_error(void)
{
    __atomic_add_fetch(&redis_errors, 1, __ATOMIC_RELAXED);
}

void aor_metrics_request_duration(const char *deployment, const char *backend, double seconds)
{
    const char *v[4] = {deployment, backend};
    add(M_REQUEST_DURATION, v, 0, 1, seconds);
}

void aor_metrics_upstream_duration(const char *backend, double seconds)
{
    const char *v[4] = {backend};
    add(M_UPSTREAM_DURATION, v, 0, 1, seconds);
}

void aor_metrics_ttfb(const char *backend, double seconds)
{
    const char *v[4] = {backend};
    add(M_TTFB, v, 0, 1, seconds);
}

void aor_metrics_inflight_add(int delta)
{
    __atomic_add_fetch(&inflight, delta, __ATOMIC_RELAXED);
}

static uint64_t conn_reset_closed, overloaded;

void aor_metrics_conn_reset_closed(void)
{
    __atomic_add_fetch(&conn_reset_closed, 1, __ATOMIC_RELAXED);
}

void aor_metrics_overloaded(void)
{
    __atomic_add_fetch(&overloaded, 1, __ATOMIC_RELAXED);
}

struct out {
    char *buf;
    size_t len, cap;
    int failed;
};

static void __attribute__((format(printf, 2, 3))) emit(struct out *o, const char *fmt, ...)
{
    va_list ap;
    int n;

    for (;;) {
        va_start(ap, fmt);
        n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            o->failed = 1;
            return;
        }
        if ((size_t)n < o->cap - o->len) {
            o->len += (size_t)n;
            return;
        }
        {
            size_t cap = o->cap * 2 + (size_t)n;
            char *b = realloc(o->buf, cap);
            if (b == NULL) {
                o->failed = 1;
                return;
            }
            o->buf = b;
            o->cap = cap;
        }
    }
}

char *aor_metrics_render(const struct aor_config *conf, int64_t now_ms, size_t *len)
{
    struct out o = {malloc(65536), 0, 65536, 0};
    size_t i, m, b;

    if (o.buf == NULL)
        return NULL;
    pthread_mutex_lock(&lock);
    for (m = 0; m != M_NUM; ++m) {
        emit(&o, "# HELP %s %s\n# TYPE %s %s\n", metric_defs[m].name, metric_defs[m].help, metric_defs[m].name,
             metric_defs[m].type);
        for (i = 0; i != table_cap; ++i) {
            struct series *s = table[i];
            if (s == NULL || s->metric != m)
                continue;
            if (s->metric < M_REQUEST_DURATION) {
                emit(&o, "%s{%s} %llu\n", metric_defs[m].name, s->labels, (unsigned long long)s->count);
            } else {
                uint64_t cum = 0;
                for (b = 0; b != NUM_BUCKETS; ++b) {
                    cum += s->bucket[b];
                    emit(&o, "%s_bucket{%s,le=\"%g\"} %llu\n", metric_defs[m].name, s->labels, buckets[b], (unsigned long long)cum);
                }
                emit(&o, "%s_bucket{%s,le=\"+Inf\"} %llu\n%s_sum{%s} %.6f\n%s_count{%s} %llu\n", metric_defs[m].name, s->labels,
                     (unsigned long long)s->count, metric_defs[m].name, s->labels, s->sum, metric_defs[m].name, s->labels,
                     (unsigned long long)s->count);
            }
        }
    }
    emit(&o,
         "# HELP aoai_router_metrics_dropped_total Updates not stored: the series bound was reached.\n"
         "# TYPE aoai_router_metrics_dropped_total counter\naoai_router_metrics_dropped_total %llu\n",
         (unsigned long long)dropped);
    pthread_mutex_unlock(&lock);

    emit(&o,
         "# HELP aoai_router_redis_errors_total Redis commands that failed or timed out.\n"
         "# TYPE aoai_router_redis_errors_total counter\naoai_router_redis_errors_total %llu\n",
         (unsigned long long)__atomic_load_n(&redis_errors, __ATOMIC_RELAXED));
    emit(&o,
         "# HELP aoai_router_log_dropped_total Log lines dropped because the log's reader stalled.\n"
         "# TYPE aoai_router_log_dropped_total counter\naoai_router_log_dropped_total{log=\"access\"} %llu\n"
         "aoai_router_log_dropped_total{log=\"error\"} %llu\n"
         "# HELP aoai_router_client_conns_reset_closed_total Client connections closed for abandoning too many requests.\n"
         "# TYPE aoai_router_client_conns_reset_closed_total counter\naoai_router_client_conns_reset_closed_total %llu\n"
         "# HELP aoai_router_overloaded_total Requests refused because the in-flight body budget was spent.\n"
         "# TYPE aoai_router_overloaded_total counter\naoai_router_overloaded_total %llu\n",
         (unsigned long long)__atomic_load_n(&aor_log_dropped_total[1], __ATOMIC_RELAXED),
         (unsigned long long)__atomic_load_n(&aor_log_dropped_total[0], __ATOMIC_RELAXED),
         (unsigned long long)__atomic_load_n(&conn_reset_closed, __ATOMIC_RELAXED),
         (unsigned long long)__atomic_load_n(&overloaded, __ATOMIC_RELAXED));
    emit(&o,
         "# HELP aoai_router_inflight_requests Requests being served.\n"
         "# TYPE aoai_router_inflight_requests gauge\naoai_router_inflight_requests %lld\n",
         (long long)__atomic_load_n(&inflight, __ATOMIC_RELAXED));
    emit(&o, "# HELP aoai_router_backend_cooldown 1 while the backend cools down after a 429.\n"
             "# TYPE aoai_router_backend_cooldown gauge\n");
    for (i = 0; i != conf->num_backends; ++i)
        emit(&o, "aoai_router_backend_cooldown{backend=\"%s\"} %d\n", conf->backends[i].name,
             aor_balancer_cooling(conf->backends[i].state, now_ms));
    emit(&o, "# HELP aoai_router_backend_remaining_tokens The backend's last x-ratelimit-remaining-tokens (-1 unknown).\n"
             "# TYPE aoai_router_backend_remaining_tokens gauge\n");
    for (i = 0; i != conf->num_backends; ++i)
        emit(&o, "aoai_router_backend_remaining_tokens{backend=\"%s\"} %lld\n", conf->backends[i].name,
             (long long)__atomic_load_n(&conf->backends[i].state->remaining_tokens, __ATOMIC_RELAXED));
    emit(&o, "# HELP aoai_router_backend_circuit_open 1 while the backend's circuit is open.\n"
             "# TYPE aoai_router_backend_circuit_open gauge\n");
    for (i = 0; i != conf->num_backends; ++i)
        emit(&o, "aoai_router_backend_circuit_open{backend=\"%s\"} %d\n", conf->backends[i].name,
             aor_balancer_circuit_open(conf->backends[i].state, now_ms));
    if (o.failed) {
        free(o.buf);
        return NULL;
    }
    *len = o.len;
    return o.buf;
}

void aor_metrics_free(void)
{
    size_t i;

    pthread_mutex_lock(&lock);
    for (i = 0; i != table_cap; ++i) {
        if (table[i] != NULL) {
            free(table[i]->labels);
            free(table[i]);
        }
    }
    free(table);
    table = NULL;
    table_cap = num_series = 0;
    pthread_mutex_unlock(&lock);
}
