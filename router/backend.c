/*
 * backend.c — see backend.h. The table is a list of backend entries, appended by the main
 * thread (under table_lock) and never shrunk before exit. Each entry owns:
 *  - the circuit (struct aor_backend_state, atomics, see balancer.c);
 *  - `configured`: a list of deployment entries, one per upstream name any config gave it
 *    (bounded by what operators wrote), reached lock-free through the config's map;
 *  - `dynamic`: AOR_BACKEND_MAX_DYNAMIC entries for a backend without a map, looked up and
 *    recycled under the entry's own mutex (one lookup per such candidate per request), plus
 *    the overflow entry used when every dynamic one is busy.
 * An entry is recycled only when no request holds it and it carries nothing worth keeping:
 * no cooldown running, no use in the last minute (so its headroom window has passed).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "backend.h"

#define IDLE_MS 60000

struct dep_entry {
    struct aor_deployment_state state; /* first: a state pointer is an entry pointer */
    struct dep_entry *next;            /* configured: the backend's list */
    int dynamic;
    int refs;             /* dynamic: requests holding it (atomic) */
    int64_t last_used_ms; /* dynamic: the last acquire or release (atomic) */
    uint64_t instance;    /* dynamic: +1 per recycle (atomic) */
    char name[AOR_BACKEND_DEPLOYMENT_NAME_MAX + 1];
    char *long_name; /* configured: a name longer than the buffer (config.c refuses them today) */
};

struct entry {
    struct aor_backend_state state; /* first: conf->backends[i].state points here */
    struct entry *next;
    uint64_t fingerprint;
    struct dep_entry *configured;
    pthread_mutex_t lock; /* dynamic[] names and recycling */
    struct dep_entry dynamic[AOR_BACKEND_MAX_DYNAMIC];
    struct dep_entry overflow;
    int overflow_used;
    struct dep_entry passthrough; /* operations without a deployment (passthrough: GET /openai/models) */
    char name[];
};

static struct entry *table;
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t instances; /* atomic */

#define LOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)

static uint64_t fnv(uint64_t h, const char *s)
{
    /* a NULL string and "" differ; a separator keeps ("ab","c") apart from ("a","bc") */
    if (s == NULL)
        return (h ^ 0xff) * 1099511628211ull;
    for (; *s != '\0'; ++s)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return (h ^ 0xfe) * 1099511628211ull;
}

/* what makes it the same backend for its runtime state: where it is, what it serves, how we log in */
static uint64_t fingerprint(const struct aor_backend_conf *b)
{
    const struct aor_cred_conf *c = &b->cred;
    uint64_t h = 14695981039346656037ull;
    char num[2] = {(char)('a' + (int)b->provider), (char)('a' + (int)c->type)};
    const char *strs[] = {c->api_key,
                          c->client_id,
                          c->tenant_id,
                          c->token_file,
                          c->imds_endpoint,
                          c->authority_host,
                          c->secret,
                          c->token_url,
                          c->client_secret,
                          c->audience,
                          c->azure_client_id,
                          c->resource,
                          c->identity_provider_id,
                          c->service_account_id,
                          c->subject_type,
                          c->subject_resource,
                          c->identity_endpoint,
                          c->identity_header};
    size_t i;

    h = fnv(h, b->url);
    h = (h ^ (unsigned char)num[0]) * 1099511628211ull;
    h = (h ^ (unsigned char)num[1]) * 1099511628211ull;
    for (i = 0; i != sizeof(strs) / sizeof(strs[0]); ++i)
        h = fnv(h, strs[i]);
    h = (h ^ (b->deployments != NULL)) * 1099511628211ull;
    for (i = 0; i != b->num_deployments; ++i) {
        h = fnv(h, b->deployments[i].logical);
        h = fnv(h, b->deployments[i].upstream);
    }
    return h;
}

static void dep_init(struct dep_entry *d, const char *name, int dynamic)
{
    size_t len = strlen(name);

    memset(d, 0, sizeof(*d));
    aor_balancer_deployment_init(&d->state);
    d->dynamic = dynamic;
    if (len < sizeof(d->name))
        memcpy(d->name, name, len + 1);
}

/* back to "nothing known", while workers may be reading it */
static void dep_forget(struct aor_deployment_state *st)
{
    STORE(&st->cooldown_until_ms, 0);
    STORE(&st->remaining_tokens, -1);
    STORE(&st->remaining_at_ms, 0);
    STORE(&st->sent_since_report, 0);
    STORE(&st->minute, 0);
    STORE(&st->sent_minute, 0);
    STORE(&st->remaining_until_ms, 0);
    STORE(&st->requests_out_until_ms, 0);
}

static const char *dep_name(const struct dep_entry *d)
{
    return d->long_name != NULL ? d->long_name : d->name;
}

static struct entry *entry_of(struct aor_backend_state *st)
{
    return (struct entry *)st;
}

static struct entry *lookup_or_create(const char *name, uint64_t fp, int *created)
{
    struct entry *e, **tail = &table;
    size_t len = strlen(name), i;

    *created = 0;
    for (e = table; e != NULL; tail = &e->next, e = e->next)
        if (strcmp(e->name, name) == 0)
            return e;
    if ((e = calloc(1, sizeof(*e) + len + 1)) == NULL)
        return NULL;
    aor_balancer_state_init(&e->state);
    pthread_mutex_init(&e->lock, NULL);
    for (i = 0; i != AOR_BACKEND_MAX_DYNAMIC; ++i)
        dep_init(&e->dynamic[i], "", 1);
    dep_init(&e->overflow, AOR_BACKEND_OVERFLOW_NAME, 0);
    dep_init(&e->passthrough, "", 0);
    e->fingerprint = fp;
    memcpy(e->name, name, len + 1);
    *tail = e;
    *created = 1;
    return e;
}

static struct dep_entry *configured_entry(struct entry *e, const char *name)
{
    struct dep_entry *d;
    size_t len = strlen(name);

    for (d = e->configured; d != NULL; d = d->next)
        if (strcmp(dep_name(d), name) == 0)
            return d;
    if ((d = malloc(sizeof(*d))) == NULL)
        return NULL;
    dep_init(d, name, 0);
    if (len >= sizeof(d->name) && (d->long_name = strdup(name)) == NULL) {
        free(d);
        return NULL;
    }
    /* published after it is complete: workers walk the list without the lock */
    d->next = e->configured;
    __atomic_store_n(&e->configured, d, __ATOMIC_RELEASE);
    return d;
}

/* the backend is another one under the same name: nothing it learnt applies */
static void reset_entry(struct entry *e)
{
    struct dep_entry *d;
    size_t i;

    STORE(&e->state.circuit_open_until_ms, 0);
    STORE(&e->state.consecutive_failures, 0);
    STORE(&e->state.probe_until_ms, 0);
    for (d = e->configured; d != NULL; d = d->next)
        dep_forget(&d->state);
    pthread_mutex_lock(&e->lock);
    for (i = 0; i != AOR_BACKEND_MAX_DYNAMIC; ++i)
        dep_forget(&e->dynamic[i].state);
    dep_forget(&e->overflow.state);
    dep_forget(&e->passthrough.state);
    pthread_mutex_unlock(&e->lock);
}

static void cap_entry(struct entry *e, int64_t now_ms, int64_t max_ms)
{
    struct dep_entry *d;
    size_t i;

    for (d = e->configured; d != NULL; d = d->next)
        aor_balancer_cap_cooldown(&d->state, now_ms, max_ms);
    for (i = 0; i != AOR_BACKEND_MAX_DYNAMIC; ++i)
        aor_balancer_cap_cooldown(&e->dynamic[i].state, now_ms, max_ms);
    aor_balancer_cap_cooldown(&e->overflow.state, now_ms, max_ms);
    aor_balancer_cap_cooldown(&e->passthrough.state, now_ms, max_ms);
}

int aor_backend_attach(struct aor_config *conf, int64_t now_ms)
{
    size_t i, j;
    int ret = 0;

    pthread_mutex_lock(&table_lock);
    for (i = 0; i != conf->num_backends && ret == 0; ++i) {
        struct aor_backend_conf *b = &conf->backends[i];
        uint64_t fp = fingerprint(b);
        int created;
        struct entry *e = lookup_or_create(b->name, fp, &created);
        if (e == NULL) {
            ret = -1;
            break;
        }
        if (!created && e->fingerprint != fp) {
            reset_entry(e);
            e->fingerprint = fp;
        }
        cap_entry(e, now_ms, (int64_t)conf->limits.max_cooldown_ms);
        b->state = &e->state;
        for (j = 0; j != b->num_deployments; ++j) {
            struct dep_entry *d = configured_entry(e, b->deployments[j].upstream);
            if (d == NULL) {
                ret = -1;
                break;
            }
            b->deployments[j].state = &d->state;
        }
    }
    pthread_mutex_unlock(&table_lock);
    return ret;
}

/* a dynamic entry for `name` on e (its lock held): the one tracking it, else an empty or idle one; NULL when all are busy */
static struct dep_entry *dynamic_entry(struct entry *e, const char *name, size_t len, int64_t now_ms)
{
    struct dep_entry *free_slot = NULL, *lru = NULL;
    size_t i;

    for (i = 0; i != AOR_BACKEND_MAX_DYNAMIC; ++i) {
        struct dep_entry *d = &e->dynamic[i];
        if (d->name[0] == '\0') {
            if (free_slot == NULL)
                free_slot = d;
            continue;
        }
        if (strncmp(d->name, name, len) == 0 && d->name[len] == '\0')
            return d;
        if (LOAD(&d->refs) == 0 && now_ms - LOAD(&d->last_used_ms) >= IDLE_MS && !aor_balancer_cooling(&d->state, now_ms) &&
            (lru == NULL || LOAD(&d->last_used_ms) < LOAD(&lru->last_used_ms)))
            lru = d;
    }
    if (free_slot == NULL)
        free_slot = lru;
    if (free_slot != NULL) {
        dep_forget(&free_slot->state);
        memcpy(free_slot->name, name, len);
        free_slot->name[len] = '\0';
        STORE(&free_slot->instance, __atomic_add_fetch(&instances, 1, __ATOMIC_RELAXED));
    }
    return free_slot;
}

const char *aor_backend_route(const struct aor_backend_conf *b, const char *logical, size_t len, int64_t now_ms,
                              struct aor_deployment_state **dep)
{
    struct entry *e;
    struct dep_entry *d;
    size_t i;

    *dep = NULL;
    if (b != NULL && logical != NULL && len == 0) {
        /* a passthrough operation without a deployment: a state of its own, never a metric series */
        *dep = &entry_of(b->state)->passthrough.state;
        return aor_config_deployment_unchanged;
    }
    if (b == NULL || logical == NULL)
        return NULL;
    if (b->deployments != NULL) {
        for (i = 0; i != b->num_deployments; ++i) {
            const struct aor_deployment_map *m = &b->deployments[i];
            if (strlen(m->logical) == len && memcmp(m->logical, logical, len) == 0) {
                *dep = m->state;
                return m->upstream;
            }
        }
        return NULL;
    }
    e = entry_of(b->state);
    if (len > AOR_BACKEND_DEPLOYMENT_NAME_MAX) {
        d = &e->overflow;
        STORE(&e->overflow_used, 1);
    } else {
        pthread_mutex_lock(&e->lock);
        if ((d = dynamic_entry(e, logical, len, now_ms)) != NULL) {
            __atomic_add_fetch(&d->refs, 1, __ATOMIC_RELAXED);
            STORE(&d->last_used_ms, now_ms);
        } else {
            /* every entry is busy or fresh: this name shares the overflow entry (documented) */
            d = &e->overflow;
            STORE(&e->overflow_used, 1);
        }
        pthread_mutex_unlock(&e->lock);
    }
    *dep = &d->state;
    return aor_config_deployment_unchanged;
}

void aor_backend_deployment_release(struct aor_deployment_state *dep, int64_t now_ms)
{
    struct dep_entry *d = (struct dep_entry *)dep;

    if (d == NULL || !d->dynamic)
        return;
    STORE(&d->last_used_ms, now_ms);
    __atomic_sub_fetch(&d->refs, 1, __ATOMIC_RELAXED);
}

size_t aor_backend_max_deployments(const struct aor_backend_conf *b)
{
    return b->deployments != NULL ? b->num_deployments : AOR_BACKEND_MAX_DYNAMIC + 1;
}

size_t aor_backend_list_deployments(const struct aor_backend_conf *b, struct aor_backend_deployment_view *out, size_t max)
{
    struct entry *e;
    size_t n = 0, i;

    if (b->state == NULL)
        return 0;
    if (b->deployments != NULL) {
        for (i = 0; i != b->num_deployments && n != max; ++i) {
            if (b->deployments[i].state == NULL)
                continue;
            out[n].state = b->deployments[i].state;
            out[n].name = b->deployments[i].upstream;
            out[n].label = b->deployments[i].logical;
            out[n].instance = 0;
            ++n;
        }
        return n;
    }
    e = entry_of(b->state);
    pthread_mutex_lock(&e->lock);
    for (i = 0; i != AOR_BACKEND_MAX_DYNAMIC && n != max; ++i) {
        struct dep_entry *d = &e->dynamic[i];
        if (d->name[0] == '\0')
            continue;
        out[n].state = &d->state;
        memcpy(out[n].buf, d->name, sizeof(out[n].buf));
        out[n].name = out[n].label = out[n].buf;
        out[n].instance = LOAD(&d->instance);
        ++n;
    }
    pthread_mutex_unlock(&e->lock);
    if (LOAD(&e->overflow_used) && n != max) {
        out[n].state = &e->overflow.state;
        out[n].name = out[n].label = AOR_BACKEND_OVERFLOW_NAME;
        out[n].instance = 0;
        ++n;
    }
    return n;
}

int aor_backend_view_current(const struct aor_backend_deployment_view *view)
{
    const struct dep_entry *d = (const struct dep_entry *)view->state;

    return !d->dynamic || LOAD(&d->instance) == view->instance;
}

void aor_backend_table_free(void)
{
    pthread_mutex_lock(&table_lock);
    while (table != NULL) {
        struct entry *e = table;
        table = e->next;
        while (e->configured != NULL) {
            struct dep_entry *d = e->configured;
            e->configured = d->next;
            free(d->long_name);
            free(d);
        }
        pthread_mutex_destroy(&e->lock);
        free(e);
    }
    pthread_mutex_unlock(&table_lock);
}
