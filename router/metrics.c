/* metrics.c — see metrics.h. Each thread updates a shard of its own (per series: counts, sum,
 * buckets), found by a hash of the raw label values in the thread's own table; a series' identity
 * (its key, with the rendered labels) is made once per process under a lock the first time any
 * thread meets it, which is where the series bound is kept. Rendering sums the shards per key,
 * each shard's mutex held for its sum only, and formats after. Series come out grouped by
 * metric, in the order they were first seen. */
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

/* a series' identity: one per distinct (metric, label values) in the process, made under
 * `keys_lock` the first time any thread updates it (the bound AOR_METRICS_MAX_SERIES counts
 * these); lives until aor_metrics_free() */
struct key {
    enum metric metric;
    uint32_t id;   /* index in `keys`: creation order, the order of the output */
    uint64_t hash; /* of the metric and the raw values */
    char *labels;  /* rendered: tenant="t",code="200" */
    char raw[];    /* the values, each NUL-terminated, one after the other */
};

static pthread_mutex_t keys_lock = PTHREAD_MUTEX_INITIALIZER;
static struct key **key_table; /* open addressing by hash */
static size_t key_table_cap;
static struct key **keys; /* by id */
static size_t num_keys, keys_cap;
static uint64_t dropped;                /* relaxed atomic */
extern uint64_t aor_redis_errors_total; /* router/redis.c counts every failed or timed-out command and dropped connection */
static int64_t inflight;

/*
 * Bounded sets of label values that do not come from the configuration: tenants (authenticated
 * ones only: the caller passes NULL for a refused request) and deployment names served by a
 * backend without a deployments map. The first `max` distinct values keep their name for the
 * life of the process; later ones are "other". Entries live until exit. A tenant's entry also
 * holds what the status page and the quota gauges show of it, all in relaxed atomics: the
 * counters, the quota and windows (a request reaches its entry through its thread's cache, a
 * settle through the record's pointer, without the set's lock).
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

#define RLOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define RSTORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)

/*
 * Per-thread shards (issue 11): every thread that updates a series gets a shard of its own,
 * registered once in `shards`. A shard holds one cell per series the thread has updated (the
 * counts, sum and buckets it added) and caches of the label entries it has seen, so a request
 * takes no process-wide lock: the shard's own mutex, uncontended except while a scrape copies
 * the cells, and no global lookup once a thread has met a series or a tenant. A scrape sums the
 * cells of every shard per series. Shards stay until aor_metrics_free(); `generation` moves
 * there, so a thread's pointer to a freed shard is never used again.
 */
struct cell {
    const struct key *key; /* NULL: an empty slot */
    uint64_t count;        /* counter value, or histogram count */
    double sum;
    uint64_t bucket[MAX_BUCKETS]; /* histograms only (non-cumulative) */
};

struct label_cache { /* the owner thread's copy of entries of a label_set: hits only ("other" is not cached) */
    struct label_entry **slots;
    size_t cap, num;
};

struct shard {
    pthread_mutex_t mu; /* held to change `cells` or a cell (by the owner) and to read them (by a scrape) */
    struct cell *cells; /* open addressing by key->hash; only the owner changes the table */
    size_t cap, num;
    struct label_cache tenants, deployments; /* the owner's only, no lock */
    struct shard *next;
} __attribute__((aligned(64))); /* one cache line or more of its own: no false sharing of the mutexes */

static pthread_mutex_t shards_lock = PTHREAD_MUTEX_INITIALIZER; /* the list; taken before a shard's mu */
static struct shard *shards;
static unsigned generation; /* relaxed atomic: moves in aor_metrics_free */
static __thread struct shard *my_shard;
static __thread unsigned my_generation;

/* the calling thread's shard (registered on first use); NULL on ENOMEM */
static struct shard *get_shard(void)
{
    unsigned g = RLOAD(&generation);
    struct shard *sh;

    if (my_shard != NULL && my_generation == g)
        return my_shard;
    if ((sh = aligned_alloc(64, sizeof(*sh))) == NULL)
        return NULL;
    memset(sh, 0, sizeof(*sh));
    pthread_mutex_init(&sh->mu, NULL);
    pthread_mutex_lock(&shards_lock);
    sh->next = shards;
    shards = sh;
    pthread_mutex_unlock(&shards_lock);
    my_shard = sh;
    my_generation = g;
    return sh;
}

/* the entry of `value` in `set` (NULL: "other"), through the thread's cache when it has one */
static struct label_entry *cached_entry(struct label_set *set, struct label_cache *c, const char *value)
{
    uint64_t h = hash_str(value);
    struct label_entry *e;
    size_t j;

    if (c != NULL && c->cap != 0)
        for (j = h & (c->cap - 1); c->slots[j] != NULL; j = (j + 1) & (c->cap - 1))
            if (strcmp(c->slots[j]->name, value) == 0)
                return c->slots[j];
    pthread_mutex_lock(&set->lock);
    e = bound_entry(set, value);
    pthread_mutex_unlock(&set->lock);
    if (e == NULL || c == NULL)
        return e;
    if ((c->num + 1) * 2 > c->cap) { /* grow: at most half full */
        size_t cap = c->cap == 0 ? 16 : c->cap * 2, i;
        struct label_entry **slots = calloc(cap, sizeof(*slots));
        if (slots == NULL)
            return e; /* not cached */
        for (i = 0; i != c->cap; ++i)
            if (c->slots[i] != NULL) {
                for (j = hash_str(c->slots[i]->name) & (cap - 1); slots[j] != NULL; j = (j + 1) & (cap - 1))
                    ;
                slots[j] = c->slots[i];
            }
        free(c->slots);
        c->slots = slots;
        c->cap = cap;
    }
    for (j = h & (c->cap - 1); c->slots[j] != NULL; j = (j + 1) & (c->cap - 1))
        ;
    c->slots[j] = e;
    ++c->num;
    return e;
}

static struct label_entry *tenant_entry(const char *tenant)
{
    struct shard *sh = get_shard();
    return cached_entry(&tenants, sh != NULL ? &sh->tenants : NULL, tenant);
}

/* `value` itself (interned) if it is in the set or the set has room, else "other" */
static const char *bound_label(struct label_set *set, struct label_cache *c, const char *value)
{
    struct label_entry *e = cached_entry(set, c, value);
    return e != NULL ? e->name : AOR_METRICS_OTHER;
}

void aor_metrics_set_max_tenants(size_t max)
{
    pthread_mutex_lock(&tenants.lock);
    tenants.max = max; /* the table grows on the next lookup; the threads' caches hold names seen, which keep theirs */
    pthread_mutex_unlock(&tenants.lock);
}

const char *aor_metrics_tenant_label(const char *tenant)
{
    struct label_entry *e;

    if (tenant == NULL || *tenant == '\0')
        return "";
    e = tenant_entry(tenant);
    return e != NULL ? e->name : AOR_METRICS_OTHER;
}

/* the tenant's label, adding `tokens` and a rejection (index into rec.rejections, -1 none) to its entry */
static const char *tenant_count(const char *tenant, uint64_t tokens, int rejection)
{
    struct label_entry *e;

    if (tenant == NULL || *tenant == '\0')
        return "";
    if ((e = tenant_entry(tenant)) == NULL)
        return AOR_METRICS_OTHER;
    if (tokens != 0)
        __atomic_add_fetch(&e->rec.tokens, tokens, __ATOMIC_RELAXED);
    if (rejection >= 0)
        __atomic_add_fetch(&e->rec.rejections[rejection], 1, __ATOMIC_RELAXED);
    return e->name;
}

struct aor_metrics_tenant_ref *aor_metrics_tenant_quota(const char *tenant, const int64_t limit[4], const int64_t used[4],
                                                        const struct aor_quota_windows *w)
{
    struct label_entry *e;
    int i;

    if (tenant == NULL || *tenant == '\0')
        return NULL;
    if ((e = tenant_entry(tenant)) != NULL) {
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
            t->tokens = RLOAD(&e->rec.tokens);
            for (j = 0; j != 5; ++j)
                t->rejections[j] = RLOAD(&e->rec.rejections[j]);
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
    {
        struct shard *sh = get_shard();
        return bound_label(&dyn_deployments, sh != NULL ? &sh->deployments : NULL, logical);
    }
}

static size_t num_labels(enum metric m)
{
    size_t n = 0;
    while (n != 4 && metric_defs[m].labels[n] != NULL)
        ++n;
    return n;
}

/* of the metric and the raw values (NULL as ""), each value ended by a 0xff byte (never in a name) */
static uint64_t hash_values(enum metric m, const char *const *values, size_t n)
{
    uint64_t h = 14695981039346656037ull ^ (uint64_t)m;
    size_t i;

    for (i = 0; i != n; ++i) {
        const unsigned char *v = (const unsigned char *)(values[i] != NULL ? values[i] : "");
        for (; *v != '\0'; ++v)
            h = (h ^ *v) * 1099511628211ull;
        h = (h ^ 0xff) * 1099511628211ull;
    }
    return h;
}

static int key_matches(const struct key *k, enum metric m, uint64_t h, const char *const *values, size_t n)
{
    const char *p = k->raw;
    size_t i;

    if (k->hash != h || k->metric != m)
        return 0;
    for (i = 0; i != n; ++i) {
        const char *v = values[i] != NULL ? values[i] : "";
        while (*v != '\0' && *p == *v)
            ++p, ++v;
        if (*p != *v)
            return 0;
        ++p;
    }
    return 1;
}

/* label values are escaped per the text format: backslash, quote, newline. A malloc'd string, NULL on ENOMEM */
static char *render_labels(enum metric m, const char *const *values, size_t num)
{
    size_t cap = 1, n = 0, i;
    char *buf;

    for (i = 0; i != num; ++i)
        cap += strlen(metric_defs[m].labels[i]) + 4 + 2 * strlen(values[i] != NULL ? values[i] : "");
    if ((buf = malloc(cap)) == NULL)
        return NULL;
    for (i = 0; i != num; ++i) {
        const char *v = values[i] != NULL ? values[i] : "", *name = metric_defs[m].labels[i];
        size_t name_len = strlen(name);
        if (i != 0)
            buf[n++] = ',';
        memcpy(buf + n, name, name_len);
        n += name_len;
        buf[n++] = '=';
        buf[n++] = '"';
        for (; *v != '\0'; ++v) {
            if (*v == '\\' || *v == '"')
                buf[n++] = '\\', buf[n++] = *v;
            else if (*v == '\n')
                buf[n++] = '\\', buf[n++] = 'n';
            else
                buf[n++] = *v;
        }
        buf[n++] = '"';
    }
    buf[n] = '\0';
    return buf;
}

/* moves the keys into a table of `cap` slots (a power of 2); -1 on ENOMEM. Call with keys_lock */
static int grow_keys(size_t cap)
{
    struct key **t = calloc(cap, sizeof(*t));
    size_t i, j;

    if (t == NULL)
        return -1;
    for (i = 0; i != key_table_cap; ++i)
        if (key_table[i] != NULL) {
            for (j = key_table[i]->hash & (cap - 1); t[j] != NULL; j = (j + 1) & (cap - 1))
                ;
            t[j] = key_table[i];
        }
    free(key_table);
    key_table = t;
    key_table_cap = cap;
    return 0;
}

/* the key of (m, values), created when new; NULL when the series bound is reached (or ENOMEM).
 * Taken the first time a thread meets a series: the process-wide lock is not on the per-request path */
static const struct key *find_key(enum metric m, const char *const *values, size_t num, uint64_t h)
{
    struct key *k = NULL;
    size_t j, i, raw_len = 0;

    pthread_mutex_lock(&keys_lock);
    if (key_table_cap == 0 && grow_keys(256) != 0)
        goto exit;
    for (j = h & (key_table_cap - 1); key_table[j] != NULL; j = (j + 1) & (key_table_cap - 1))
        if (key_matches(key_table[j], m, h, values, num)) {
            k = key_table[j];
            goto exit;
        }
    if (num_keys >= AOR_METRICS_MAX_SERIES)
        goto exit;
    if (num_keys == keys_cap) {
        size_t cap = keys_cap == 0 ? 256 : keys_cap * 2;
        struct key **ks = realloc(keys, cap * sizeof(*ks));
        if (ks == NULL)
            goto exit;
        keys = ks;
        keys_cap = cap;
    }
    for (i = 0; i != num; ++i)
        raw_len += strlen(values[i] != NULL ? values[i] : "") + 1;
    if ((k = calloc(1, sizeof(*k) + raw_len)) == NULL)
        goto exit;
    if ((k->labels = render_labels(m, values, num)) == NULL) {
        free(k);
        k = NULL;
        goto exit;
    }
    for (i = 0, raw_len = 0; i != num; ++i) {
        const char *v = values[i] != NULL ? values[i] : "";
        size_t len = strlen(v) + 1;
        memcpy(k->raw + raw_len, v, len);
        raw_len += len;
    }
    k->metric = m;
    k->hash = h;
    k->id = (uint32_t)num_keys;
    keys[num_keys++] = k;
    key_table[j] = k;
    if (num_keys * 2 > key_table_cap)
        grow_keys(key_table_cap * 2); /* on ENOMEM the table stays as it is, still with a free slot */
exit:
    pthread_mutex_unlock(&keys_lock);
    return k;
}

/* the shard's cell for `k` (a new one when the thread never updated it); NULL on ENOMEM. Call with sh->mu */
static struct cell *insert_cell(struct shard *sh, const struct key *k)
{
    size_t j;

    if ((sh->num + 1) * 2 > sh->cap) {
        size_t cap = sh->cap == 0 ? 64 : sh->cap * 2, i;
        struct cell *cells = calloc(cap, sizeof(*cells));
        if (cells == NULL)
            return NULL;
        for (i = 0; i != sh->cap; ++i)
            if (sh->cells[i].key != NULL) {
                for (j = sh->cells[i].key->hash & (cap - 1); cells[j].key != NULL; j = (j + 1) & (cap - 1))
                    ;
                cells[j] = sh->cells[i];
            }
        free(sh->cells);
        sh->cells = cells;
        sh->cap = cap;
    }
    for (j = k->hash & (sh->cap - 1); sh->cells[j].key != NULL; j = (j + 1) & (sh->cap - 1))
        ;
    sh->cells[j].key = k;
    ++sh->num;
    return &sh->cells[j];
}

static void add(enum metric m, const char *const *values, uint64_t delta, int observe, double value)
{
    size_t num = num_labels(m), j, b;
    uint64_t h = hash_values(m, values, num);
    struct shard *sh = get_shard();
    struct cell *c = NULL;
    const struct key *k;

    if (sh == NULL) {
        __atomic_add_fetch(&dropped, 1, __ATOMIC_RELAXED);
        return;
    }
    /* only this thread changes its table: it looks up without the mutex */
    if (sh->cap != 0)
        for (j = h & (sh->cap - 1); sh->cells[j].key != NULL; j = (j + 1) & (sh->cap - 1))
            if (key_matches(sh->cells[j].key, m, h, values, num)) {
                c = &sh->cells[j];
                break;
            }
    pthread_mutex_lock(&sh->mu);
    if (c == NULL && ((k = find_key(m, values, num, h)) == NULL || (c = insert_cell(sh, k)) == NULL)) {
        pthread_mutex_unlock(&sh->mu);
        __atomic_add_fetch(&dropped, 1, __ATOMIC_RELAXED);
        return;
    }
    if (!observe) {
        c->count += delta;
    } else {
        ++c->count;
        c->sum += value;
        for (b = 0; b != metric_defs[m].num_bounds; ++b)
            if (value <= metric_defs[m].bounds[b]) {
                ++c->bucket[b];
                break;
            }
    }
    pthread_mutex_unlock(&sh->mu);
}

/* `code` in decimal, written from the end of `buf`: no printf on the request path */
static const char *code_str(int code, char buf[12])
{
    char *p = buf + 11;
    unsigned u = code < 0 ? 0u - (unsigned)code : (unsigned)code;

    *p = '\0';
    do
        *--p = (char)('0' + u % 10);
    while ((u /= 10) != 0);
    if (code < 0)
        *--p = '-';
    return p;
}

void aor_metrics_request(const char *tenant, const char *deployment, const char *backend, int code)
{
    char c[12];
    const char *v[4] = {aor_metrics_tenant_label(tenant), deployment, backend, code_str(code, c)};
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
    /* the `limit` values of aoai_router_quota_rejections_total (SPEC §7), so the two join */
    static const char *const names[4] = {"tpm", "rpm", "day", "month"};
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

/* the sum over the shards of every series, indexed by key id (*n set: the keys as of the call;
 * a cell with no key is a series no shard has counted yet); NULL on ENOMEM */
static struct cell *merge_shards(size_t *n, uint64_t *dropped_now)
{
    struct cell *acc;
    struct shard *sh;
    size_t i, b;

    pthread_mutex_lock(&keys_lock);
    *n = num_keys; /* keys made later are left to the next scrape (their ids are >= n) */
    pthread_mutex_unlock(&keys_lock);
    *dropped_now = RLOAD(&dropped);
    if ((acc = calloc(*n != 0 ? *n : 1, sizeof(*acc))) == NULL)
        return NULL;
    /* each shard's mutex is held while its cells are added up, one shard at a time */
    pthread_mutex_lock(&shards_lock);
    for (sh = shards; sh != NULL; sh = sh->next) {
        pthread_mutex_lock(&sh->mu);
        for (i = 0; i != sh->cap; ++i) {
            const struct cell *c = &sh->cells[i];
            struct cell *a;
            if (c->key == NULL || c->key->id >= *n)
                continue;
            a = &acc[c->key->id];
            a->key = c->key;
            a->count += c->count;
            a->sum += c->sum;
            for (b = 0; b != MAX_BUCKETS; ++b)
                a->bucket[b] += c->bucket[b];
        }
        pthread_mutex_unlock(&sh->mu);
    }
    pthread_mutex_unlock(&shards_lock);
    return acc;
}

char *aor_metrics_render(const struct aor_config *conf, int64_t now_ms, size_t *len)
{
    struct out o = {malloc(65536), 0, 65536, 0};
    struct cell *snap;
    size_t i, m, b, n = 0;
    uint64_t dropped_now;

    if (o.buf == NULL)
        return NULL;
    /* the shards' locks are held for the sums only; formatting happens after (key labels are never freed before exit) */
    if ((snap = merge_shards(&n, &dropped_now)) == NULL) {
        free(o.buf);
        return NULL;
    }

    for (m = 0; m != M_NUM; ++m) {
        emit(&o, "# HELP %s %s\n# TYPE %s %s\n", metric_defs[m].name, metric_defs[m].help, metric_defs[m].name,
             metric_defs[m].type);
        for (i = 0; i != n; ++i) {
            struct cell *s = &snap[i];
            if (s->key == NULL || s->key->metric != m)
                continue;
            if (m < M_REQUEST_DURATION) {
                emit(&o, "%s{%s} %llu\n", metric_defs[m].name, s->key->labels, (unsigned long long)s->count);
            } else {
                uint64_t cum = 0;
                for (b = 0; b != metric_defs[m].num_bounds; ++b) {
                    double le = metric_defs[m].bounds[b];
                    cum += s->bucket[b];
                    /* %g keeps 6 digits: whole bounds (16777216) are printed whole */
                    emit(&o, le >= 1e6 ? "%s_bucket{%s,le=\"%.0f\"} %llu\n" : "%s_bucket{%s,le=\"%g\"} %llu\n", metric_defs[m].name,
                         s->key->labels, le, (unsigned long long)cum);
                }
                emit(&o, "%s_bucket{%s,le=\"+Inf\"} %llu\n%s_sum{%s} %.6f\n%s_count{%s} %llu\n", metric_defs[m].name,
                     s->key->labels, (unsigned long long)s->count, metric_defs[m].name, s->key->labels, s->sum, metric_defs[m].name,
                     s->key->labels, (unsigned long long)s->count);
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
    struct shard *sh, *next;
    size_t i;

    /* at exit, once the threads that update metrics are done; a thread that updates after it gets a new shard */
    pthread_mutex_lock(&shards_lock);
    for (sh = shards; sh != NULL; sh = next) {
        next = sh->next;
        free(sh->cells);
        free(sh->tenants.slots);
        free(sh->deployments.slots);
        pthread_mutex_destroy(&sh->mu);
        free(sh);
    }
    shards = NULL;
    __atomic_add_fetch(&generation, 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&shards_lock);
    pthread_mutex_lock(&keys_lock);
    for (i = 0; i != num_keys; ++i) {
        free(keys[i]->labels);
        free(keys[i]);
    }
    free(keys);
    free(key_table);
    keys = key_table = NULL;
    num_keys = keys_cap = key_table_cap = 0;
    pthread_mutex_unlock(&keys_lock);
    free_label_set(&tenants);
    free_label_set(&dyn_deployments);
}
