/* metrics.c — see metrics.h. An open-addressing hash table of series keyed by
 * (metric, label values); rendering copies the series under the lock and formats the copy
 * after it (label strings are never freed before exit), so a scrape holds the lock only for
 * a memcpy per series. Series come out grouped by metric, unsorted. */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "backend.h"
#include "balancer.h"
#include "config.h"
#include "log.h"
#include "metrics.h"
#include "cred.h"
#include "quota.h"

enum metric {
    M_REQUESTS,
    M_TOKENS,
    M_FAILOVERS,
    M_QUOTA_REJECTIONS,
    M_AUTH_FAILURES,
    M_REQUEST_DURATION,
    M_UPSTREAM_DURATION,
    M_TTFB,
    M_GENAI_TOKENS,
    M_GENAI_TTFT,
    M_NUM
};

/* bucket bounds: ours (5 ms .. 120 s, limits.upstream_timeout_ms' default), and the explicit
 * boundaries the OpenTelemetry GenAI semantic conventions advise for their two histograms */
static const double buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
static const double genai_token_buckets[] = {1,     4,     16,     64,      256,     1024,     4096,
                                             16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864};
static const double genai_ttft_buckets[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,
                                            0.25,  0.5,   0.75, 1.0,  2.5,  5.0,  7.5,  10.0};
#define NB(a) (sizeof(a) / sizeof(a[0]))
#define MAX_BUCKETS 16

static const struct {
    const char *name, *help, *type;
    const char *labels[4];
    const double *bounds; /* histograms only */
    size_t num_bounds;
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
                            {"deployment", "backend"},
                            buckets,
                            NB(buckets)},
    [M_UPSTREAM_DURATION] = {"aoai_router_upstream_duration_seconds",
                             "Duration of the answering upstream attempt.",
                             "histogram",
                             {"backend"},
                             buckets,
                             NB(buckets)},
    [M_TTFB] = {"aoai_router_time_to_first_byte_seconds",
                "Time to the first streamed byte.",
                "histogram",
                {"backend"},
                buckets,
                NB(buckets)},
    /* OpenTelemetry GenAI semantic conventions, as their Prometheus translation names them
     * (gen_ai.client.token.usage, unit {token}: no suffix; gen_ai.server.time_to_first_token,
     * unit s: _seconds). Labels from bounded sets only, as every other series. */
    [M_GENAI_TOKENS] = {"gen_ai_client_token_usage",
                        "Tokens per request by type (OpenTelemetry gen_ai.client.token.usage).",
                        "histogram",
                        {"gen_ai_operation_name", "gen_ai_request_model", "gen_ai_token_type"},
                        genai_token_buckets,
                        NB(genai_token_buckets)},
    [M_GENAI_TTFT] = {"gen_ai_server_time_to_first_token_seconds",
                      "Time to the first token of successful streamed responses (OpenTelemetry gen_ai.server.time_to_first_token).",
                      "histogram",
                      {"gen_ai_operation_name", "gen_ai_request_model"},
                      genai_ttft_buckets,
                      NB(genai_ttft_buckets)},
};

struct series {
    enum metric metric;
    char *labels; /* rendered: tenant="t",code="200" */
    uint64_t hash;
    double sum;
    uint64_t count;               /* counter value, or histogram count */
    uint64_t bucket[MAX_BUCKETS]; /* histograms only (non-cumulative) */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct series **table;
static size_t table_cap, num_series;
static uint64_t dropped;
extern uint64_t aor_redis_errors_total; /* router/redis.c counts every failed or timed-out command and dropped connection */
static int64_t inflight;

/*
 * Bounded sets of label values that do not come from the configuration: tenants (authenticated
 * ones only: the caller passes NULL for a refused request) and deployment names served by a
 * backend without a deployments map. The first `max` distinct values keep their name for the
 * life of the process; later ones are "other". Entries live until exit. A tenant's entry also
 * holds what the status page and the quota gauges show of it: the counters under the set's lock
 * (taken anyway for the label lookup), the quota and windows in relaxed atomics (a settle
 * updates them through the record's pointer, without the lock).
 */
struct tenant_rec {
    int have_quota;
    int64_t limit[4], used[4];
    int64_t minute_id, day_id, month_id; /* the windows `used` belongs to */
    uint64_t tokens;
    uint64_t rejections[5];
};

struct label_entry {
    struct tenant_rec rec; /* tenants only */
    char name[];
};

struct label_set {
    pthread_mutex_t lock;
    struct label_entry **slots; /* open addressing, cap >= 2 x max */
    size_t cap, num, max;
};

static struct label_set tenants = {PTHREAD_MUTEX_INITIALIZER, NULL, 0, 0, AOR_METRICS_MAX_TENANTS};
static struct label_set dyn_deployments = {PTHREAD_MUTEX_INITIALIZER, NULL, 0, 0, AOR_METRICS_MAX_DYNAMIC_DEPLOYMENTS};

static uint64_t hash_str(const char *s)
{
    uint64_t h = 14695981039346656037ull;
    for (; *s != '\0'; ++s)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* moves the entries into a table of `cap` slots; -1 on ENOMEM (the old table stays). Call locked */
static int rehash(struct label_set *set, size_t cap)
{
    struct label_entry **slots = calloc(cap, sizeof(*slots));
    size_t i, j;

    if (slots == NULL)
        return -1;
    for (i = 0; i != set->cap; ++i) {
        if (set->slots[i] == NULL)
            continue;
        for (j = hash_str(set->slots[i]->name) % cap; slots[j] != NULL; j = (j + 1) % cap)
            ;
        slots[j] = set->slots[i];
    }
    free(set->slots);
    set->slots = slots;
    set->cap = cap;
    return 0;
}

/* the entry of `value` if it is in the set or the set has room (created), else NULL ("other"). Call locked */
static struct label_entry *bound_entry(struct label_set *set, const char *value)
{
    size_t j, len;
    struct label_entry *e;

    if (set->cap < set->max * 2 + 2 && rehash(set, set->max * 2 + 2) != 0)
        return NULL;
    for (j = hash_str(value) % set->cap; set->slots[j] != NULL; j = (j + 1) % set->cap)
        if (strcmp(set->slots[j]->name, value) == 0)
            return set->slots[j];
    if (set->num >= set->max)
        return NULL;
    len = strlen(value);
    if ((e = calloc(1, sizeof(*e) + len + 1)) == NULL)
        return NULL;
    memcpy(e->name, value, len + 1);
    set->slots[j] = e;
    ++set->num;
    return e;
}

/* `value` itself (interned) if it is in the set or the set has room, else "other" */
static const char *bound_label(struct label_set *set, const char *value)
{
    struct label_entry *e;

    pthread_mutex_lock(&set->lock);
    e = bound_entry(set, value);
    pthread_mutex_unlock(&set->lock);
    return e != NULL ? e->name : AOR_METRICS_OTHER;
}

static void free_label_set(struct label_set *set)
{
    size_t j;

    pthread_mutex_lock(&set->lock);
    for (j = 0; j != set->cap; ++j)
        free(set->slots[j]);
    free(set->slots);
    set->slots = NULL;
    set->cap = set->num = 0;
    pthread_mutex_unlock(&set->lock);
}

void aor_metrics_set_max_tenants(size_t max)
{
    pthread_mutex_lock(&tenants.lock);
    tenants.max = max; /* the table grows on the next lookup */
    pthread_mutex_unlock(&tenants.lock);
}

const char *aor_metrics_tenant_label(const char *tenant)
{
    if (tenant == NULL || *tenant == '\0')
        return "";
    return bound_label(&tenants, tenant);
}

/* the tenant's label, adding `tokens` and a rejection (index into rec.rejections, -1 none) to its entry */
static const char *tenant_count(const char *tenant, uint64_t tokens, int rejection)
{
    struct label_entry *e;

    if (tenant == NULL || *tenant == '\0')
        return "";
    pthread_mutex_lock(&tenants.lock);
    if ((e = bound_entry(&tenants, tenant)) != NULL) {
        e->rec.tokens += tokens;
        if (rejection >= 0)
            ++e->rec.rejections[rejection];
    }
    pthread_mutex_unlock(&tenants.lock);
    return e != NULL ? e->name : AOR_METRICS_OTHER;
}

#define RLOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define RSTORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)

struct aor_metrics_tenant_ref *aor_metrics_tenant_quota(const char *tenant, const int64_t limit[4], const int64_t used[4],
                                                        const struct aor_quota_windows *w)
{
    struct label_entry *e;
    int i;

    if (tenant == NULL || *tenant == '\0')
        return NULL;
    pthread_mutex_lock(&tenants.lock);
    if ((e = bound_entry(&tenants, tenant)) != NULL) {
        /* stored atomically: a settle adds to them without the lock */
        for (i = 0; i != 4; ++i) {
            RSTORE(&e->rec.limit[i], limit[i]);
            RSTORE(&e->rec.used[i], used[i] < 0 ? 0 : used[i]);
        }
        RSTORE(&e->rec.minute_id, w->minute_id);
        RSTORE(&e->rec.day_id, w->day_id);
        RSTORE(&e->rec.month_id, w->month_id);
        RSTORE(&e->rec.have_quota, 1);
    }
    pthread_mutex_unlock(&tenants.lock);
    return (struct aor_metrics_tenant_ref *)e;
}

/* *v += delta, not below 0 (a settle racing a newer absolute figure from Redis) */
static void add_floor0(int64_t *v, int64_t delta)
{
    int64_t old = RLOAD(v), next;

    do
        next = old + delta < 0 ? 0 : old + delta;
    while (!__atomic_compare_exchange_n(v, &old, next, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
}

void aor_metrics_tenant_settle(struct aor_metrics_tenant_ref *ref, const struct aor_quota_windows *at, int64_t estimate,
                               int64_t actual)
{
    struct label_entry *e = (struct label_entry *)ref;
    int64_t delta;

    if (e == NULL)
        return;
    if (estimate < 0)
        estimate = 0;
    delta = actual < 0 ? -estimate : actual - estimate;
    if (RLOAD(&e->rec.minute_id) == at->minute_id) {
        add_floor0(&e->rec.used[0], delta);
        if (actual < 0)
            add_floor0(&e->rec.used[1], -1);
    }
    if (RLOAD(&e->rec.day_id) == at->day_id)
        add_floor0(&e->rec.used[2], delta);
    if (RLOAD(&e->rec.month_id) == at->month_id)
        add_floor0(&e->rec.used[3], delta);
}

struct aor_metrics_tenant *aor_metrics_tenants(int64_t now_ms, size_t *n)
{
    struct aor_metrics_tenant *out = NULL;
    struct aor_quota_windows w;
    size_t i, j, k = 0;

    *n = 0;
    aor_quota_windows(now_ms, &w);
    pthread_mutex_lock(&tenants.lock);
    if (tenants.num != 0 && (out = calloc(tenants.num, sizeof(*out))) != NULL) {
        for (i = 0; i != tenants.cap && k != tenants.num; ++i) {
            const struct label_entry *e = tenants.slots[i];
            struct aor_metrics_tenant *t = &out[k];
            if (e == NULL)
                continue;
            snprintf(t->name, sizeof(t->name), "%s", e->name);
            t->have_quota = RLOAD(&e->rec.have_quota);
            for (j = 0; j != 4; ++j)
                t->limit[j] = RLOAD(&e->rec.limit[j]);
            /* a window that has ended since: the router knows of nothing in the new one */
            t->used[0] = RLOAD(&e->rec.minute_id) == w.minute_id ? RLOAD(&e->rec.used[0]) : 0;
            t->used[1] = RLOAD(&e->rec.minute_id) == w.minute_id ? RLOAD(&e->rec.used[1]) : 0;
            t->used[2] = RLOAD(&e->rec.day_id) == w.day_id ? RLOAD(&e->rec.used[2]) : 0;
            t->used[3] = RLOAD(&e->rec.month_id) == w.month_id ? RLOAD(&e->rec.used[3]) : 0;
            t->tokens = e->rec.tokens;
            memcpy(t->rejections, e->rec.rejections, sizeof(t->rejections));
            ++k;
        }
    }
    pthread_mutex_unlock(&tenants.lock);
    *n = k;
    return out;
}

const char *aor_metrics_deployment_label(const struct aor_config *conf, const char *logical, int authenticated_and_served)
{
    size_t i, j, len;

    if (logical == NULL || *logical == '\0')
        return "";
    len = strlen(logical);
    for (i = 0; i != conf->num_backends; ++i)
        for (j = 0; j != conf->backends[i].num_deployments; ++j)
            if (strcmp(conf->backends[i].deployments[j].logical, logical) == 0)
                return logical;
    /* not a configured name: only a backend without a map can have served it, and only an
     * authenticated client can have asked; the names such clients use are a bounded set */
    if (!authenticated_and_served || len > 64)
        return "";
    return bound_label(&dyn_deployments, logical);
}

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
        for (b = 0; b != metric_defs[m].num_bounds; ++b)
            if (value <= metric_defs[m].bounds[b]) {
                ++s->bucket[b];
                break;
            }
    }
    pthread_mutex_unlock(&lock);
}

void aor_metrics_request(const char *tenant, const char *deployment, const char *backend, int code)
{
    char c[12];
    const char *v[4] = {aor_metrics_tenant_label(tenant), deployment, backend, c};
    snprintf(c, sizeof(c), "%d", code);
    add(M_REQUESTS, v, 1, 0, 0);
}

void aor_metrics_tokens(const char *tenant, const char *deployment, const char *backend, int64_t prompt, int64_t completion)
{
    const char *t = tenant_count(tenant, (uint64_t)(prompt > 0 ? prompt : 0) + (uint64_t)(completion > 0 ? completion : 0), -1);
    const char *p[4] = {t, deployment, backend, "prompt"}, *c[4] = {t, deployment, backend, "completion"};
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
    static const char *const limits[] = {"tpm", "rpm", "day", "month", "deployment"};
    int r = -1, i;
    for (i = 0; i != 5; ++i)
        if (strcmp(limit, limits[i]) == 0)
            r = i;
    const char *v[4] = {tenant_count(tenant, 0, r), limit};
    add(M_QUOTA_REJECTIONS, v, 1, 0, 0);
}

void aor_metrics_auth_failure(const char *reason)
{
    const char *v[4] = {reason};
    add(M_AUTH_FAILURES, v, 1, 0, 0);
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

const char *aor_metrics_genai_operation(const char *op, size_t len)
{
#define OP_IS(lit) (len == sizeof(lit) - 1 && memcmp(op, lit, len) == 0)
    if (op == NULL)
        return AOR_METRICS_OTHER;
    if (OP_IS("chat/completions") || OP_IS("responses"))
        return "chat";
    if (OP_IS("completions"))
        return "text_completion";
    if (OP_IS("embeddings"))
        return "embeddings";
    return AOR_METRICS_OTHER;
#undef OP_IS
}

void aor_metrics_genai_tokens(const char *operation, const char *deployment, int64_t input, int64_t output)
{
    const char *in[4] = {operation, deployment, "input"}, *out[4] = {operation, deployment, "output"};
    add(M_GENAI_TOKENS, in, 0, 1, (double)(input > 0 ? input : 0));
    /* an embedding generates nothing: no output observation (it would only fill the first bucket) */
    if (output > 0 || strcmp(operation, "embeddings") != 0)
        add(M_GENAI_TOKENS, out, 0, 1, (double)(output > 0 ? output : 0));
}

void aor_metrics_genai_ttft(const char *operation, const char *deployment, double seconds)
{
    const char *v[4] = {operation, deployment};
    add(M_GENAI_TTFT, v, 0, 1, seconds);
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

/* `v` as a label value in `buf` (cap >= 1): backslash, quote and newline escaped; cut at the capacity */
static const char *label_value(const char *v, char *buf, size_t cap)
{
    size_t n = 0;

    for (; *v != '\0' && n + 3 < cap; ++v) {
        if (*v == '\\' || *v == '"')
            buf[n++] = '\\', buf[n++] = *v;
        else if (*v == '\n')
            buf[n++] = '\\', buf[n++] = 'n';
        else
            buf[n++] = *v;
    }
    buf[n] = '\0';
    return buf;
}

/* the per backend deployment gauges: cooldown and remaining tokens, for every deployment the backends of `conf` have */
static void emit_backend_gauges(struct out *o, const struct aor_config *conf, int64_t now_ms)
{
    struct aor_backend_deployment_view *views;
    size_t *of_backend, i, j, k, max = 0, total = 0;
    char backend[600], deployment[600]; /* names are at most 256 bytes, escaped at most twice that */

    for (i = 0; i != conf->num_backends; ++i)
        max += aor_backend_max_deployments(&conf->backends[i]);
    /* one listing for both gauges: a map-less backend's names may change between two listings */
    views = calloc(max != 0 ? max : 1, sizeof(*views));
    of_backend = calloc(max != 0 ? max : 1, sizeof(*of_backend));
    if (views == NULL || of_backend == NULL) {
        o->failed = 1;
        goto exit;
    }
    for (i = 0; i != conf->num_backends; ++i) {
        size_t n = aor_backend_list_deployments(&conf->backends[i], views + total, max - total);
        for (j = 0; j != n; ++j)
            of_backend[total + j] = i;
        total += n;
    }
    for (k = 0; k != 2; ++k) {
        if (k == 0)
            emit(o, "# HELP aoai_router_backend_cooldown 1 while the backend deployment cools down after a 429.\n"
                    "# TYPE aoai_router_backend_cooldown gauge\n");
        else
            emit(o, "# HELP aoai_router_backend_remaining_tokens The backend deployment's last x-ratelimit-remaining-tokens "
                    "(-1 unknown).\n# TYPE aoai_router_backend_remaining_tokens gauge\n");
        for (j = 0; j != total; ++j) {
            label_value(conf->backends[of_backend[j]].name, backend, sizeof(backend));
            label_value(views[j].label, deployment, sizeof(deployment));
            if (k == 0)
                emit(o, "aoai_router_backend_cooldown{backend=\"%s\",deployment=\"%s\"} %d\n", backend, deployment,
                     aor_balancer_cooling(views[j].state, now_ms));
            else
                emit(o, "aoai_router_backend_remaining_tokens{backend=\"%s\",deployment=\"%s\"} %lld\n", backend, deployment,
                     (long long)__atomic_load_n(&views[j].state->remaining_tokens, __ATOMIC_RELAXED));
        }
    }
exit:
    free(views);
    free(of_backend);
}

/* per backend with a token credential (cred.h): refresh failures of its token source, seconds its token has left */
static void emit_credential_series(struct out *o, const struct aor_config *conf, int64_t now_ms)
{
    size_t i;
    char backend[600];

    emit(o, "# HELP aoai_router_credential_refresh_failures_total Failed token calls of the backend's credential.\n"
            "# TYPE aoai_router_credential_refresh_failures_total counter\n");
    for (i = 0; i != conf->num_backends; ++i)
        if (conf->backends[i].cred.stats != NULL)
            emit(o, "aoai_router_credential_refresh_failures_total{backend=\"%s\"} %llu\n",
                 label_value(conf->backends[i].name, backend, sizeof(backend)),
                 (unsigned long long)__atomic_load_n(&conf->backends[i].cred.stats->refresh_failures, __ATOMIC_RELAXED));
    emit(o, "# HELP aoai_router_credential_expiry_seconds Seconds until the backend's current access token expires (0: none).\n"
            "# TYPE aoai_router_credential_expiry_seconds gauge\n");
    for (i = 0; i != conf->num_backends; ++i) {
        int64_t at;
        if (conf->backends[i].cred.stats == NULL)
            continue;
        at = __atomic_load_n(&conf->backends[i].cred.stats->expires_at_ms, __ATOMIC_RELAXED);
        emit(o, "aoai_router_credential_expiry_seconds{backend=\"%s\"} %lld\n",
             label_value(conf->backends[i].name, backend, sizeof(backend)), (long long)(at > now_ms ? (at - now_ms) / 1000 : 0));
    }
    /* redis.auth: the Redis token's source (its own: resource https://redis.azure.com) */
    if (conf->redis.cred.stats != NULL) {
        int64_t at = __atomic_load_n(&conf->redis.cred.stats->expires_at_ms, __ATOMIC_RELAXED);
        emit(o,
             "# HELP aoai_router_redis_credential_refresh_failures_total Failed token calls of redis.auth's credential.\n"
             "# TYPE aoai_router_redis_credential_refresh_failures_total counter\n"
             "aoai_router_redis_credential_refresh_failures_total %llu\n"
             "# HELP aoai_router_redis_credential_expiry_seconds Seconds until Redis' current access token expires (0: none).\n"
             "# TYPE aoai_router_redis_credential_expiry_seconds gauge\n"
             "aoai_router_redis_credential_expiry_seconds %lld\n",
             (unsigned long long)__atomic_load_n(&conf->redis.cred.stats->refresh_failures, __ATOMIC_RELAXED),
             (long long)(at > now_ms ? (at - now_ms) / 1000 : 0));
    }
}

/* per tenant with a label of its own whose quota the admit stage has seen: the quota (an unlimited
 * one has no limit sample) and the usage of the current windows as the router last knew it */
static void emit_tenant_gauges(struct out *o, int64_t now_ms)
{
    static const char *const names[4] = {"tpm", "rpm", "tokens_per_day", "tokens_per_month"};
    size_t n, i, k;
    struct aor_metrics_tenant *t = aor_metrics_tenants(now_ms, &n);
    char tenant[300];

    emit(o, "# HELP aoai_router_tenant_quota_limit The tenant's quota per window (-1 unlimited: no sample; 0 blocked).\n"
            "# TYPE aoai_router_tenant_quota_limit gauge\n");
    for (i = 0; i != n; ++i)
        for (k = 0; k != 4; ++k)
            if (t[i].have_quota && t[i].limit[k] >= 0)
                emit(o, "aoai_router_tenant_quota_limit{tenant=\"%s\",limit=\"%s\"} %lld\n",
                     label_value(t[i].name, tenant, sizeof(tenant)), names[k], (long long)t[i].limit[k]);
    emit(o, "# HELP aoai_router_tenant_quota_used The tenant's usage of the current window as this router last knew it.\n"
            "# TYPE aoai_router_tenant_quota_used gauge\n");
    for (i = 0; i != n; ++i)
        for (k = 0; k != 4; ++k)
            if (t[i].have_quota)
                emit(o, "aoai_router_tenant_quota_used{tenant=\"%s\",limit=\"%s\"} %lld\n",
                     label_value(t[i].name, tenant, sizeof(tenant)), names[k], (long long)t[i].used[k]);
    free(t);
}

char *aor_metrics_render(const struct aor_config *conf, int64_t now_ms, size_t *len)
{
    struct out o = {malloc(65536), 0, 65536, 0};
    struct series *snap = NULL;
    size_t i, m, b, n = 0;
    uint64_t dropped_now;

    if (o.buf == NULL)
        return NULL;
    /* the lock is held for a copy of the series only; formatting happens after it */
    pthread_mutex_lock(&lock);
    if (num_series != 0 && (snap = malloc(num_series * sizeof(*snap))) == NULL) {
        pthread_mutex_unlock(&lock);
        free(o.buf);
        return NULL;
    }
    for (i = 0; i != table_cap; ++i)
        if (table[i] != NULL)
            snap[n++] = *table[i];
    dropped_now = dropped;
    pthread_mutex_unlock(&lock);

    for (m = 0; m != M_NUM; ++m) {
        emit(&o, "# HELP %s %s\n# TYPE %s %s\n", metric_defs[m].name, metric_defs[m].help, metric_defs[m].name,
             metric_defs[m].type);
        for (i = 0; i != n; ++i) {
            struct series *s = &snap[i];
            if (s->metric != m)
                continue;
            if (s->metric < M_REQUEST_DURATION) {
                emit(&o, "%s{%s} %llu\n", metric_defs[m].name, s->labels, (unsigned long long)s->count);
            } else {
                uint64_t cum = 0;
                for (b = 0; b != metric_defs[m].num_bounds; ++b) {
                    double le = metric_defs[m].bounds[b];
                    cum += s->bucket[b];
                    /* %g keeps 6 digits: whole bounds (16777216) are printed whole */
                    emit(&o, le >= 1e6 ? "%s_bucket{%s,le=\"%.0f\"} %llu\n" : "%s_bucket{%s,le=\"%g\"} %llu\n", metric_defs[m].name,
                         s->labels, le, (unsigned long long)cum);
                }
                emit(&o, "%s_bucket{%s,le=\"+Inf\"} %llu\n%s_sum{%s} %.6f\n%s_count{%s} %llu\n", metric_defs[m].name, s->labels,
                     (unsigned long long)s->count, metric_defs[m].name, s->labels, s->sum, metric_defs[m].name, s->labels,
                     (unsigned long long)s->count);
            }
        }
    }
    free(snap);
    emit(&o,
         "# HELP aoai_router_metrics_dropped_total Updates not stored: the series bound was reached.\n"
         "# TYPE aoai_router_metrics_dropped_total counter\naoai_router_metrics_dropped_total %llu\n",
         (unsigned long long)dropped_now);
    emit(&o,
         "# HELP aoai_router_redis_errors_total Redis commands that failed or timed out.\n"
         "# TYPE aoai_router_redis_errors_total counter\naoai_router_redis_errors_total %llu\n",
         (unsigned long long)__atomic_load_n(&aor_redis_errors_total, __ATOMIC_RELAXED));
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
    /* the same version and commit as --version (CMake passes both) */
    emit(&o,
         "# HELP aoai_router_build_info The running build: version and git commit (always 1).\n"
         "# TYPE aoai_router_build_info gauge\naoai_router_build_info{version=\"%s\",commit=\"%s\"} 1\n",
         AOR_VERSION, AOR_GIT_COMMIT);
    emit_backend_gauges(&o, conf, now_ms);
    emit(&o, "# HELP aoai_router_backend_circuit_open 1 while the backend's circuit is open.\n"
             "# TYPE aoai_router_backend_circuit_open gauge\n");
    for (i = 0; i != conf->num_backends; ++i) {
        char backend[600];
        emit(&o, "aoai_router_backend_circuit_open{backend=\"%s\"} %d\n",
             label_value(conf->backends[i].name, backend, sizeof(backend)),
             aor_balancer_circuit_open(conf->backends[i].state, now_ms));
    }
    emit_credential_series(&o, conf, now_ms);
    emit_tenant_gauges(&o, now_ms);
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
    free_label_set(&tenants);
    free_label_set(&dyn_deployments);
}
