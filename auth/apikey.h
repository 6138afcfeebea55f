/*
 * apikey — subscription keys (SPEC §4, §6): a key is known by the SHA-256 of its bytes,
 * looked up in auth.keys.static, then in Redis (<prefix>key:<sha256-hex>, and the tenant's
 * `disabled` flag in <prefix>tenant:{T}). One struct aor_apikeys per worker: a bounded cache of
 * answers (positive and negative, 1 s) and one Redis round trip per key at a time.
 * The key itself is never stored or logged: only its digest, or the digest's first 8 hex digits.
 */
#ifndef AOR_APIKEY_H
#define AOR_APIKEY_H

#include <stddef.h>
#include <stdint.h>

struct aor_config;
struct aor_static_key_conf;
struct aor_redis;
struct aor_apikeys;
struct aor_apikey_pending;

#define AOR_APIKEY_MIN_LEN 16      /* shorter keys are refused without a lookup */
#define AOR_APIKEY_MAX_LEN 256     /* so are longer ones */
#define AOR_APIKEY_TENANT_MAX 256  /* as config.c's tenant names */
#define AOR_APIKEY_NAME_MAX 64     /* longer names are truncated */
#define AOR_APIKEY_TTL_MS 1000     /* how long an answer is reused: a revoke is seen within TTL + one round trip */
#define AOR_APIKEY_STALE_MS 600000 /* how long a good answer may still name the tenant when Redis is down */
#define AOR_APIKEY_CACHE_DEFAULT 4096
#define AOR_APIKEY_MAX_FLIGHTS 4096 /* distinct keys being looked up at once, per worker */
/* of which keys without a checksum (legacy aor_ keys, operators' own): a flood of random keys
 * costs at most this many Redis round trips in flight per worker and never touches the rest */
#define AOR_APIKEY_MAX_UNCHECKED_FLIGHTS 64

/*
 * Key format made by `keys create` (like GitHub's tokens): "aor_" + base64url(32 random bytes)
 * (43 characters) + a checksum of 8 base64url characters, the first 6 bytes of SHA-256 over the
 * first 47 characters. A key with that prefix and length whose checksum does not hold is refused
 * without a Redis round trip. Keys made before (AOR_APIKEY_LEGACY_LEN) and operators' own keys
 * have no checksum: still looked up, within AOR_APIKEY_MAX_UNCHECKED_FLIGHTS.
 */
#define AOR_APIKEY_PREFIX "aor_"
#define AOR_APIKEY_LEGACY_LEN 47  /* "aor_" + 43 */
#define AOR_APIKEY_CHECKSUM_LEN 8 /* base64url characters */
#define AOR_APIKEY_CHECKED_LEN 55 /* "aor_" + 43 + 8 */

enum aor_apikey_status {
    AOR_APIKEY_OK = 0,
    AOR_APIKEY_UNKNOWN,         /* 401: malformed, not in static keys nor Redis (or Redis not configured) */
    AOR_APIKEY_REVOKED,         /* 403: revoked 1 */
    AOR_APIKEY_TENANT_DISABLED, /* 403: <prefix>tenant:{T} disabled 1 */
    AOR_APIKEY_UNAVAILABLE,     /* Redis down or failing: the caller applies redis.on_failure */
    AOR_APIKEY_BUSY,            /* 503: a key without a checksum, and AOR_APIKEY_MAX_UNCHECKED_FLIGHTS are in flight */
};

enum aor_apikey_source { AOR_APIKEY_SOURCE_NONE = 0, AOR_APIKEY_SOURCE_STATIC, AOR_APIKEY_SOURCE_CACHE, AOR_APIKEY_SOURCE_REDIS };

struct aor_apikey_result {
    enum aor_apikey_status status;
    enum aor_apikey_source source;
    /* OK, REVOKED, TENANT_DISABLED: the key's tenant. UNAVAILABLE: the tenant of the last good
     * answer for this key if younger than AOR_APIKEY_STALE_MS (for on_failure: open), else "".
     * UNKNOWN: "" */
    char tenant[AOR_APIKEY_TENANT_MAX + 1];
    char name[AOR_APIKEY_NAME_MAX + 1]; /* the key's `name` field (printable ASCII), "" if none or static */
    char digest_prefix[9];              /* first 8 hex digits of the SHA-256, "" for a malformed key: for logs */
};

/* called once with the answer to a pending lookup; `result` is valid during the call only */
typedef void (*aor_apikey_cb)(void *data, const struct aor_apikey_result *result);

/**
 * Creates a worker's key table. `redis` (may be NULL: static keys only) is borrowed and must
 * outlive it. `capacity` is the number of cached answers (0 = AOR_APIKEY_CACHE_DEFAULT, rounded
 * up to a multiple of 8). NULL on ENOMEM.
 */
struct aor_apikeys *aor_apikeys_create(struct aor_redis *redis, size_t capacity);

/**
 * Frees it, cancelling lookups in flight: their callbacks are never called and their pending
 * handles become invalid. Call it before destroying the aor_redis, never from a callback. NULL is a no-op.
 */
void aor_apikeys_destroy(struct aor_apikeys *k);

/**
 * Looks up `key` (`key_len` bytes, need not be NUL-terminated) under `conf` (static keys, and
 * redis.url / redis.prefix; `conf` need only live for the call).
 * `now_ms`: a monotonic millisecond clock, the same for every call on `k` (uv_now(loop) is the one).
 *
 * Returns 1 when answered at once — malformed key or wrong checksum, static key, no Redis configured (UNKNOWN),
 * a key without a checksum while AOR_APIKEY_MAX_UNCHECKED_FLIGHTS are in flight (BUSY),
 * fresh cached answer, or Redis known to be down or `k` created without a client while the config
 * names one (UNAVAILABLE) — with `*sync_result` filled; `*pending` is NULL and `cb` is never called.
 * Returns 0 when the answer needs Redis: `*pending` is set, and `cb(data, result)` will be called
 * exactly once, never before this returns, unless aor_apikeys_cancel(*pending) is called first
 * (do so when the request goes away). `*sync_result` is then untouched.
 * Lookups of the same key share one round trip. The callback may start new lookups and cancel
 * other pending ones, but must not destroy `k`.
 */
int aor_apikeys_lookup(struct aor_apikeys *k, const struct aor_config *conf, const char *key, size_t key_len, int64_t now_ms,
                       aor_apikey_cb cb, void *data, struct aor_apikey_result *sync_result, struct aor_apikey_pending **pending);

/* stops a pending lookup: its callback is not called and `p` is freed. NULL is a no-op */
void aor_apikeys_cancel(struct aor_apikey_pending *p);

/* counters since creation (loop thread only) */
struct aor_apikeys_stats {
    uint64_t lookups, static_hits, cache_hits, redis_lookups, shared_lookups, unavailable;
    uint64_t bad_checksum; /* refused without Redis: the aor_ format with a wrong checksum */
    uint64_t busy;         /* refused: too many lookups of keys without a checksum in flight */
};
void aor_apikeys_get_stats(const struct aor_apikeys *k, struct aor_apikeys_stats *out);

/* ---- pure parts, also used by `aoai-router keys` and the unit tests ---- */

/* 1 when `key` has AOR_APIKEY_MIN_LEN..AOR_APIKEY_MAX_LEN bytes, all printable ASCII without space */
int aor_apikey_syntax_ok(const char *key, size_t len);

/* the AOR_APIKEY_CHECKSUM_LEN characters of the checksum of the first AOR_APIKEY_LEGACY_LEN bytes of `key`; 0, or -1 if OpenSSL
 * fails */
int aor_apikey_checksum(const char *key, char out[AOR_APIKEY_CHECKSUM_LEN]);

/* 1: a key of the checksummed format whose checksum holds; 0: no checksum to check (another
 * format); -1: the checksummed format (prefix and length) with a wrong checksum */
int aor_apikey_check_format(const char *key, size_t len);

/* SHA-256 of the key bytes (OpenSSL EVP); 0, or -1 if OpenSSL fails */
int aor_apikey_digest(const char *key, size_t len, unsigned char out[32]);

/* lower-case hex of a digest, NUL-terminated */
void aor_apikey_hex(const unsigned char digest[32], char out[65]);

/* 0 when `hex` is 64 hex digits (either case), filling `out`; -1 otherwise */
int aor_apikey_unhex(const char *hex, size_t len, unsigned char out[32]);

/* Redis yes/no fields (revoked, disabled): absent (NULL), "", "0", "false", "no" are no; anything else is yes, failing safe */
int aor_apikey_flag_set(const char *s, size_t len);

/* the one tenant-name rule (tenant.h): 1..128 bytes of [A-Za-z0-9._:@-] */
int aor_apikey_tenant_ok(const char *s, size_t len);

/*
 * The static key whose sha256 equals `hex` (64 lower-case hex digits), or NULL. Every entry is
 * compared in full with CRYPTO_memcmp, whatever matches, so the time does not depend on how
 * much of a digest matched nor on which entry did.
 */
const struct aor_static_key_conf *aor_apikey_find_static(const struct aor_config *conf, const char hex[65]);

/*
 * The answer cache, apart from I/O so that it can be tested with a hand-moved clock.
 * Set-associative (8 ways a set, least recently used evicted within the set), the set chosen by a
 * keyed hash of the digest so that clients cannot aim their keys at one set.
 */
struct aor_apikey_cache;
struct aor_apikey_cache *aor_apikey_cache_create(size_t capacity);
void aor_apikey_cache_destroy(struct aor_apikey_cache *c);
size_t aor_apikey_cache_capacity(const struct aor_apikey_cache *c);
/* stores the answer (status, tenant, name) read at `stored_ms`; UNAVAILABLE is not stored. 0, or -1 on ENOMEM */
int aor_apikey_cache_put(struct aor_apikey_cache *c, const unsigned char digest[32], const struct aor_apikey_result *r,
                         int64_t stored_ms);
/* 1 and `out` filled (status, tenant, name) when an answer stored within [now - AOR_APIKEY_TTL_MS, now] exists; else 0 */
int aor_apikey_cache_get(struct aor_apikey_cache *c, const unsigned char digest[32], int64_t now_ms, struct aor_apikey_result *out);
/* the tenant of an OK answer stored within AOR_APIKEY_STALE_MS of `now`, copied to `tenant`; 1 if found */
int aor_apikey_cache_last_good(const struct aor_apikey_cache *c, const unsigned char digest[32], int64_t now_ms,
                               char tenant[AOR_APIKEY_TENANT_MAX + 1]);
/* entries currently held (for tests) */
size_t aor_apikey_cache_count(const struct aor_apikey_cache *c);

#endif
