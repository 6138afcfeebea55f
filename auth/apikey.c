/*
 * apikey.c — see apikey.h. Three layers: pure checks (syntax, digest, static keys), the answer
 * cache (pure, clock passed in), and the Redis flights: one per digest being looked up, with
 * the requests waiting for it.
 *
 * A flight is two round trips: HGETALL <prefix>key:<hex>, then, for a live key,
 * HGET <prefix>tenant:{T} disabled. Its answer is cached as of the moment the flight started,
 * which is no later than when Redis was read: an entry never outlives what Redis said by more
 * than the TTL.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <hiredis/hiredis.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include "apikey.h"
#include "config.h"
#include "log.h"
#include "redis.h"
#include "tenant.h"

#define WAYS 8
#define FLIGHT_BUCKETS 1024

/* ---- pure checks ---- */

int aor_apikey_syntax_ok(const char *key, size_t len)
{
    if (key == NULL || len < AOR_APIKEY_MIN_LEN || len > AOR_APIKEY_MAX_LEN)
        return 0;
    for (size_t i = 0; i < len; ++i)
        if ((unsigned char)key[i] < 0x21 || (unsigned char)key[i] > 0x7e)
            return 0;
    return 1;
}

static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;
static EVP_MD *sha256_md; /* fetched once: an implicit fetch per digest costs as much as the digest */

static void fetch_sha256(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

int aor_apikey_digest(const char *key, size_t len, unsigned char out[32])
{
    unsigned int n = 0;

    pthread_once(&sha256_once, fetch_sha256);
    if (sha256_md == NULL || EVP_Digest(key, len, out, &n, sha256_md, NULL) != 1 || n != 32)
        return -1;
    return 0;
}

int aor_apikey_checksum(const char *key, char out[AOR_APIKEY_CHECKSUM_LEN])
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    unsigned char d[32];

    if (aor_apikey_digest(key, AOR_APIKEY_LEGACY_LEN, d) != 0)
        return -1;
    /* 6 bytes, 48 bits: 8 characters of 6 bits */
    for (int i = 0; i != 2; ++i) {
        uint32_t v = (uint32_t)d[3 * i] << 16 | (uint32_t)d[3 * i + 1] << 8 | d[3 * i + 2];
        out[4 * i] = abc[v >> 18 & 63];
        out[4 * i + 1] = abc[v >> 12 & 63];
        out[4 * i + 2] = abc[v >> 6 & 63];
        out[4 * i + 3] = abc[v & 63];
    }
    return 0;
}

int aor_apikey_check_format(const char *key, size_t len)
{
    char sum[AOR_APIKEY_CHECKSUM_LEN];

    if (len != AOR_APIKEY_CHECKED_LEN || memcmp(key, AOR_APIKEY_PREFIX, sizeof(AOR_APIKEY_PREFIX) - 1) != 0)
        return 0;
    if (aor_apikey_checksum(key, sum) != 0)
        return 0; /* cannot tell: let Redis decide, as for a key without a checksum */
    /* not a secret (anyone can compute it), so a plain comparison */
    return memcmp(sum, key + AOR_APIKEY_LEGACY_LEN, AOR_APIKEY_CHECKSUM_LEN) == 0 ? 1 : -1;
}

void aor_apikey_hex(const unsigned char digest[32], char out[65])
{
    static const char digits[] = "0123456789abcdef";

    for (size_t i = 0; i < 32; ++i) {
        out[2 * i] = digits[digest[i] >> 4];
        out[2 * i + 1] = digits[digest[i] & 15];
    }
    out[64] = '\0';
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

int aor_apikey_unhex(const char *hex, size_t len, unsigned char out[32])
{
    if (len != 64)
        return -1;
    for (size_t i = 0; i < 32; ++i) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (unsigned char)(hi * 16 + lo);
    }
    return 0;
}

int aor_apikey_tenant_ok(const char *s, size_t len)
{
    return aor_tenant_name_ok(s, len);
}

const struct aor_static_key_conf *aor_apikey_find_static(const struct aor_config *conf, const char hex[65])
{
    const struct aor_static_key_conf *found = NULL;

    for (size_t i = 0; i != conf->auth.num_static_keys; ++i) {
        int differ = CRYPTO_memcmp(conf->auth.static_keys[i].sha256, hex, 64);
        /* no early exit: every entry is compared in full */
        if (differ == 0)
            found = &conf->auth.static_keys[i];
    }
    return found;
}

/* ---- the answer cache ---- */

struct centry {
    unsigned char digest[32];
    int64_t stored_ms;
    uint64_t used; /* cache tick of the last hit or store: least recently used goes first */
    char *strs;    /* "tenant\0name\0", NULL when both are empty */
    uint8_t status;
    uint8_t in_use;
};

struct aor_apikey_cache {
    struct centry *entries; /* nsets * WAYS */
    size_t nsets;           /* a power of two */
    uint64_t k0, k1;        /* the hash key */
    uint64_t tick;
    size_t count;
};

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 32;
    x *= 0xd6e8feb86659fd93ull;
    x ^= x >> 32;
    x *= 0xd6e8feb86659fd93ull;
    x ^= x >> 32;
    return x;
}

/* a keyed hash of a digest: the digest is uniform, the key keeps clients from choosing the bucket */
static uint64_t keyed_hash(const unsigned char d[32], uint64_t k0, uint64_t k1)
{
    uint64_t a, b;

    memcpy(&a, d, 8);
    memcpy(&b, d + 8, 8);
    return mix64(a ^ k0) + mix64(b ^ k1 ^ mix64(a + k0));
}

static void random_key(uint64_t *k0, uint64_t *k1)
{
    uint64_t k[2];

    if (getrandom(k, sizeof(k), GRND_NONBLOCK) != (ssize_t)sizeof(k)) {
        k[0] = mix64((uint64_t)(uintptr_t)k0 ^ 0x9e3779b97f4a7c15ull);
        k[1] = mix64(k[0] + (uint64_t)(uintptr_t)&k);
    }
    *k0 = k[0];
    *k1 = k[1];
}

struct aor_apikey_cache *aor_apikey_cache_create(size_t capacity)
{
    struct aor_apikey_cache *c = calloc(1, sizeof(*c));
    size_t nsets = 1;

    if (c == NULL)
        return NULL;
    if (capacity == 0)
        capacity = AOR_APIKEY_CACHE_DEFAULT;
    while (nsets * WAYS < capacity && nsets < ((size_t)1 << 24))
        nsets <<= 1;
    c->nsets = nsets;
    if ((c->entries = calloc(nsets * WAYS, sizeof(*c->entries))) == NULL) {
        free(c);
        return NULL;
    }
    random_key(&c->k0, &c->k1);
    return c;
}

void aor_apikey_cache_destroy(struct aor_apikey_cache *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i != c->nsets * WAYS; ++i)
        free(c->entries[i].strs);
    free(c->entries);
    free(c);
}

size_t aor_apikey_cache_capacity(const struct aor_apikey_cache *c)
{
    return c->nsets * WAYS;
}

size_t aor_apikey_cache_count(const struct aor_apikey_cache *c)
{
    return c->count;
}

static struct centry *cache_set(const struct aor_apikey_cache *c, const unsigned char digest[32])
{
    return &c->entries[(keyed_hash(digest, c->k0, c->k1) & (c->nsets - 1)) * WAYS];
}

static struct centry *cache_find(const struct aor_apikey_cache *c, const unsigned char digest[32])
{
    struct centry *set = cache_set(c, digest);

    for (size_t i = 0; i != WAYS; ++i)
        if (set[i].in_use && memcmp(set[i].digest, digest, 32) == 0)
            return &set[i];
    return NULL;
}

static void copy_str(char *dst, size_t size, const char *src)
{
    size_t n = src != NULL ? strlen(src) : 0;

    if (n >= size)
        n = size - 1;
    memcpy(dst, src != NULL ? src : "", n);
    dst[n] = '\0';
}

int aor_apikey_cache_put(struct aor_apikey_cache *c, const unsigned char digest[32], const struct aor_apikey_result *r,
                         int64_t stored_ms)
{
    struct centry *e = cache_find(c, digest), *set;
    size_t tlen = strlen(r->tenant), nlen = strlen(r->name);
    char *strs = NULL;

    if (r->status == AOR_APIKEY_UNAVAILABLE)
        return 0;
    if (tlen + nlen != 0) {
        if ((strs = malloc(tlen + nlen + 2)) == NULL)
            return -1;
        memcpy(strs, r->tenant, tlen + 1);
        memcpy(strs + tlen + 1, r->name, nlen + 1);
    }
    if (e == NULL) {
        set = cache_set(c, digest);
        for (size_t i = 0; i != WAYS && e == NULL; ++i)
            if (!set[i].in_use)
                e = &set[i];
        if (e == NULL) {
            e = &set[0];
            for (size_t i = 1; i != WAYS; ++i)
                if (set[i].used < e->used)
                    e = &set[i];
        } else {
            ++c->count;
        }
        memcpy(e->digest, digest, 32);
        e->in_use = 1;
    }
    free(e->strs);
    e->strs = strs;
    e->status = (uint8_t)r->status;
    e->stored_ms = stored_ms;
    e->used = ++c->tick;
    return 0;
}

int aor_apikey_cache_get(struct aor_apikey_cache *c, const unsigned char digest[32], int64_t now_ms, struct aor_apikey_result *out)
{
    struct centry *e = cache_find(c, digest);

    /* a clock that went back counts as expired, not as fresh forever */
    if (e == NULL || now_ms < e->stored_ms || now_ms - e->stored_ms >= AOR_APIKEY_TTL_MS)
        return 0;
    e->used = ++c->tick;
    out->status = (enum aor_apikey_status)e->status;
    copy_str(out->tenant, sizeof(out->tenant), e->strs);
    copy_str(out->name, sizeof(out->name), e->strs != NULL ? e->strs + strlen(e->strs) + 1 : NULL);
    return 1;
}

int aor_apikey_cache_last_good(const struct aor_apikey_cache *c, const unsigned char digest[32], int64_t now_ms,
                               char tenant[AOR_APIKEY_TENANT_MAX + 1])
{
    const struct centry *e = cache_find(c, digest);

    if (e == NULL || e->status != AOR_APIKEY_OK || e->strs == NULL || now_ms < e->stored_ms ||
        now_ms - e->stored_ms >= AOR_APIKEY_STALE_MS)
        return 0;
    copy_str(tenant, AOR_APIKEY_TENANT_MAX + 1, e->strs);
    return 1;
}

/* ---- lookups through Redis ---- */

struct flight {
    struct aor_apikeys *k;
    struct flight *next; /* in its bucket */
    unsigned char digest[32];
    char hex[65];
    char *prefix;  /* redis.prefix of the lookup that started it */
    int unchecked; /* the key has no checksum: counted in num_unchecked */
    int64_t started_ms;
    struct aor_redis_cmd *cmd;                         /* the round trip under way, NULL between them */
    struct aor_apikey_pending *waiters, *waiters_tail; /* answered in arrival order */
    struct aor_apikey_result result;
};

struct aor_apikey_pending {
    struct flight *f;
    struct aor_apikey_pending *prev, *next;
    aor_apikey_cb cb;
    void *data;
};

struct aor_apikeys {
    struct aor_redis *redis;
    struct aor_apikey_cache *cache;
    struct flight *buckets[FLIGHT_BUCKETS];
    size_t num_flights;
    size_t num_unchecked; /* flights of keys without a checksum */
    uint64_t k0, k1;
    struct aor_apikeys_stats stats;
};

struct aor_apikeys *aor_apikeys_create(struct aor_redis *redis, size_t capacity)
{
    struct aor_apikeys *k = calloc(1, sizeof(*k));

    if (k == NULL)
        return NULL;
    if ((k->cache = aor_apikey_cache_create(capacity)) == NULL) {
        free(k);
        return NULL;
    }
    k->redis = redis;
    random_key(&k->k0, &k->k1);
    return k;
}

static void free_flight(struct flight *f)
{
    struct aor_apikey_pending *w;

    while ((w = f->waiters) != NULL) {
        f->waiters = w->next;
        free(w);
    }
    free(f->prefix);
    free(f);
}

void aor_apikeys_destroy(struct aor_apikeys *k)
{
    if (k == NULL)
        return;
    for (size_t i = 0; i != FLIGHT_BUCKETS; ++i) {
        struct flight *f;
        while ((f = k->buckets[i]) != NULL) {
            k->buckets[i] = f->next;
            aor_redis_cancel(f->cmd);
            free_flight(f);
        }
    }
    aor_apikey_cache_destroy(k->cache);
    free(k);
}

void aor_apikeys_get_stats(const struct aor_apikeys *k, struct aor_apikeys_stats *out)
{
    *out = k->stats;
}

static struct flight **flight_slot(struct aor_apikeys *k, const unsigned char digest[32])
{
    struct flight **pp = &k->buckets[keyed_hash(digest, k->k0, k->k1) & (FLIGHT_BUCKETS - 1)];

    while (*pp != NULL && memcmp((*pp)->digest, digest, 32) != 0)
        pp = &(*pp)->next;
    return pp;
}

static void flight_unlink(struct flight *f)
{
    struct flight **pp = flight_slot(f->k, f->digest);

    if (*pp == f) {
        *pp = f->next;
        --f->k->num_flights;
        if (f->unchecked)
            --f->k->num_unchecked;
    }
}

int aor_apikey_flag_set(const char *s, size_t len)
{
    if (s == NULL || len == 0)
        return 0;
    return !((len == 1 && s[0] == '0') || (len == 5 && strncasecmp(s, "false", 5) == 0) ||
             (len == 2 && strncasecmp(s, "no", 2) == 0));
}

static int truthy(const redisReply *v)
{
    return v != NULL && v->type == REDIS_REPLY_STRING && aor_apikey_flag_set(v->str, v->len);
}

static int field_is(const redisReply *f, const char *name)
{
    size_t n = strlen(name);
    return f->type == REDIS_REPLY_STRING && f->len == n && memcmp(f->str, name, n) == 0;
}

/* a name for logs: printable ASCII, truncated */
static void copy_name(char *dst, const redisReply *v)
{
    size_t n = 0;

    if (v != NULL && v->type == REDIS_REPLY_STRING)
        for (size_t i = 0; i < v->len && n < AOR_APIKEY_NAME_MAX; ++i)
            dst[n++] = v->str[i] >= 0x20 && v->str[i] < 0x7f ? v->str[i] : '?';
    dst[n] = '\0';
}

static void finish(struct flight *f, enum aor_apikey_status status)
{
    struct aor_apikeys *k = f->k;
    struct aor_apikey_pending *w;

    f->cmd = NULL;
    f->result.status = status;
    if (status == AOR_APIKEY_UNAVAILABLE) {
        ++k->stats.unavailable;
        f->result.name[0] = '\0';
        if (!aor_apikey_cache_last_good(k->cache, f->digest, f->started_ms, f->result.tenant))
            f->result.tenant[0] = '\0';
    } else {
        if (status == AOR_APIKEY_UNKNOWN)
            f->result.tenant[0] = f->result.name[0] = '\0';
        aor_apikey_cache_put(k->cache, f->digest, &f->result, f->started_ms);
    }
    /* out of the table before any callback, which may look the same key up again */
    flight_unlink(f);
    while ((w = f->waiters) != NULL) {
        aor_apikey_cb cb = w->cb;
        void *data = w->data;
        if ((f->waiters = w->next) != NULL)
            f->waiters->prev = NULL;
        else
            f->waiters_tail = NULL;
        free(w);
        cb(data, &f->result);
    }
    free(f->prefix);
    free(f);
}

static void on_tenant(void *data, const struct redisReply *reply, const char *errstr)
{
    struct flight *f = data;

    if (errstr != NULL) {
        if (errstr == aor_redis_err_reply)
            AOR_LOG(AOR_LOG_WARN, "apikey", "key %.8s: reading %stenant:{%s}: %s", f->hex, f->prefix, f->result.tenant, reply->str);
        finish(f, AOR_APIKEY_UNAVAILABLE);
        return;
    }
    finish(f, truthy(reply) ? AOR_APIKEY_TENANT_DISABLED : AOR_APIKEY_OK);
}

static void on_key(void *data, const struct redisReply *reply, const char *errstr)
{
    struct flight *f = data;
    const redisReply *tenant = NULL, *name = NULL, *revoked = NULL;

    f->cmd = NULL;
    if (errstr != NULL) {
        /* a key that is not a hash was not written by `keys create`: unknown. Other errors pass */
        if (errstr == aor_redis_err_reply) {
            AOR_LOG(AOR_LOG_WARN, "apikey", "key %.8s: reading %skey:<sha256>: %s", f->hex, f->prefix, reply->str);
            if (strncmp(reply->str, "WRONGTYPE", 9) == 0) {
                finish(f, AOR_APIKEY_UNKNOWN);
                return;
            }
        }
        finish(f, AOR_APIKEY_UNAVAILABLE);
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY) {
        finish(f, AOR_APIKEY_UNAVAILABLE);
        return;
    }
    for (size_t i = 0; i + 1 < reply->elements; i += 2) {
        const redisReply *fld = reply->element[i], *val = reply->element[i + 1];
        if (field_is(fld, "tenant"))
            tenant = val;
        else if (field_is(fld, "name"))
            name = val;
        else if (field_is(fld, "revoked"))
            revoked = val;
    }
    if (reply->elements == 0) { /* no such hash */
        finish(f, AOR_APIKEY_UNKNOWN);
        return;
    }
    if (tenant == NULL || tenant->type != REDIS_REPLY_STRING || !aor_apikey_tenant_ok(tenant->str, tenant->len)) {
        AOR_LOG(AOR_LOG_WARN, "apikey", "key %.8s: %skey:<sha256> has no valid tenant field; refused", f->hex, f->prefix);
        finish(f, AOR_APIKEY_UNKNOWN);
        return;
    }
    memcpy(f->result.tenant, tenant->str, tenant->len);
    f->result.tenant[tenant->len] = '\0';
    copy_name(f->result.name, name);
    if (truthy(revoked)) {
        finish(f, AOR_APIKEY_REVOKED);
        return;
    }
    f->cmd = aor_redis_command(f->k->redis, on_tenant, f, "HGET %stenant:{%s} disabled", f->prefix, f->result.tenant);
    if (f->cmd == NULL)
        finish(f, AOR_APIKEY_UNAVAILABLE);
}

static void answer_unavailable(struct aor_apikeys *k, const unsigned char digest[32], int64_t now_ms, struct aor_apikey_result *res)
{
    ++k->stats.unavailable;
    res->status = AOR_APIKEY_UNAVAILABLE;
    aor_apikey_cache_last_good(k->cache, digest, now_ms, res->tenant);
}

int aor_apikeys_lookup(struct aor_apikeys *k, const struct aor_config *conf, const char *key, size_t key_len, int64_t now_ms,
                       aor_apikey_cb cb, void *data, struct aor_apikey_result *res, struct aor_apikey_pending **pending)
{
    const struct aor_static_key_conf *sk;
    unsigned char digest[32];
    struct aor_apikey_pending *w;
    struct flight **slot, *f;
    char hex[65];
    int checked;

    *pending = NULL;
    res->status = AOR_APIKEY_UNKNOWN;
    res->source = AOR_APIKEY_SOURCE_NONE;
    res->tenant[0] = res->name[0] = res->digest_prefix[0] = '\0';
    ++k->stats.lookups;
    if (!aor_apikey_syntax_ok(key, key_len))
        return 1;
    if (aor_apikey_digest(key, key_len, digest) != 0) {
        res->status = AOR_APIKEY_UNAVAILABLE;
        return 1;
    }
    aor_apikey_hex(digest, hex);
    memcpy(res->digest_prefix, hex, 8);
    res->digest_prefix[8] = '\0';

    if ((sk = aor_apikey_find_static(conf, hex)) != NULL) {
        ++k->stats.static_hits;
        res->status = AOR_APIKEY_OK;
        res->source = AOR_APIKEY_SOURCE_STATIC;
        copy_str(res->tenant, sizeof(res->tenant), sk->tenant);
        return 1;
    }
    if (conf->redis.url == NULL)
        return 1;
    if (k->redis != NULL && aor_apikey_cache_get(k->cache, digest, now_ms, res)) {
        ++k->stats.cache_hits;
        res->source = AOR_APIKEY_SOURCE_CACHE;
        return 1;
    }
    /* only on a miss (a key with a wrong checksum is never cached): the hot path pays no second hash */
    if ((checked = aor_apikey_check_format(key, key_len)) < 0) { /* a mistyped or made-up key: no Redis round trip */
        ++k->stats.bad_checksum;
        return 1;
    }
    if (k->redis == NULL) { /* configured, but this worker has no client (e.g. Redis added by a reload) */
        answer_unavailable(k, digest, now_ms, res);
        return 1;
    }

    res->source = AOR_APIKEY_SOURCE_REDIS;
    if ((w = calloc(1, sizeof(*w))) == NULL) {
        answer_unavailable(k, digest, now_ms, res);
        return 1;
    }
    slot = flight_slot(k, digest);
    if ((f = *slot) != NULL) {
        ++k->stats.shared_lookups;
    } else {
        if (checked == 0 && k->num_unchecked >= AOR_APIKEY_MAX_UNCHECKED_FLIGHTS) {
            /* keys anyone can make up share a small budget: a flood of them cannot take the
             * round trips of checksummed keys; one of them refused now may try again (503) */
            ++k->stats.busy;
            free(w);
            res->status = AOR_APIKEY_BUSY;
            return 1;
        }
        if (k->num_flights >= AOR_APIKEY_MAX_FLIGHTS || (f = calloc(1, sizeof(*f))) == NULL ||
            (f->prefix = strdup(conf->redis.prefix != NULL ? conf->redis.prefix : "aoai:")) == NULL)
            goto unavailable;
        f->k = k;
        memcpy(f->digest, digest, 32);
        memcpy(f->hex, hex, 65);
        f->started_ms = now_ms;
        memcpy(f->result.digest_prefix, res->digest_prefix, 9);
        f->result.source = AOR_APIKEY_SOURCE_REDIS;
        if ((f->cmd = aor_redis_command(k->redis, on_key, f, "HGETALL %skey:%s", f->prefix, hex)) == NULL)
            goto unavailable;
        ++k->stats.redis_lookups;
        *slot = f;
        ++k->num_flights;
        if ((f->unchecked = checked == 0))
            ++k->num_unchecked;
    }
    w->f = f;
    w->cb = cb;
    w->data = data;
    if ((w->prev = f->waiters_tail) != NULL)
        w->prev->next = w;
    else
        f->waiters = w;
    f->waiters_tail = w;
    *pending = w;
    return 0;

unavailable:
    if (f != NULL) {
        free(f->prefix);
        free(f);
    }
    free(w);
    answer_unavailable(k, digest, now_ms, res);
    return 1;
}

void aor_apikeys_cancel(struct aor_apikey_pending *p)
{
    if (p == NULL)
        return;
    /* the flight goes on without it: its answer still fills the cache */
    if (p->prev != NULL)
        p->prev->next = p->next;
    else
        p->f->waiters = p->next;
    if (p->next != NULL)
        p->next->prev = p->prev;
    else
        p->f->waiters_tail = p->prev;
    free(p);
}
