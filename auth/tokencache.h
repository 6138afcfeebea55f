/*
 * tokencache — a worker's memory of JWT verification outcomes, keyed by a salted SHA-256 of
 * the token, so that a client re-sending its token costs a hash and a lookup instead of a
 * signature check, and a flood of one bad token costs the same. Single-threaded (one cache
 * per worker, no locks) and pure: the clock is an argument. Bounded: a fixed number of
 * entries, least recently used evicted first.
 */
#ifndef AOR_TOKENCACHE_H
#define AOR_TOKENCACHE_H

#include <stddef.h>
#include <stdint.h>

#define AOR_TOKENCACHE_DEFAULT_CAPACITY 8192
#define AOR_TOKENCACHE_MAX_CAPACITY (1u << 20)
/* a verified token is re-verified at least this often, so that a key the IdP withdrew (or a
 * policy the operator tightened without a reload) stops a token before it expires */
#define AOR_TOKENCACHE_MAX_TTL_MS (300 * 1000)
/* refusals: long enough to absorb a flood, short enough not to matter to a client that fixes its token */
#define AOR_TOKENCACHE_NEGATIVE_TTL_MS (5 * 1000)
/* an unknown kid may become known at the next JWKS fetch: remember that refusal only briefly */
#define AOR_TOKENCACHE_UNKNOWN_KID_TTL_MS 1000

struct aor_tokencache;

/* the digest a token is looked up by; compute it once per request, use it for get and put */
struct aor_tokencache_key {
    unsigned char digest[32];
};

/* what the gateway needs from a verification (jwt.h struct aor_jwt_result) */
struct aor_tokencache_value {
    int err;     /* AOR_JWT_OK, or the AOR_JWT_E_* refusal: status and reason via aor_jwt_http_status/_reason */
    int issuer;  /* index into conf->auth.jwt of the issuer that decided, -1 for none */
    int64_t exp; /* the token's exp in seconds (successes; ignored for refusals) */
    /* NUL-terminated, each shorter than AOR_JWT_ID_MAX; "" when absent (NULL is taken as "" by put) */
    const char *tenant, *sub, *oid, *client_id;
};

struct aor_tokencache_stats {
    size_t count, capacity;
    uint64_t hits, misses, evictions; /* evictions: entries dropped for room, not for expiry */
};

/**
 * A cache of `capacity` entries (1..AOR_TOKENCACHE_MAX_CAPACITY) with a fresh random salt, so
 * that nobody can aim tokens at one hash chain. Returns NULL on a bad capacity or ENOMEM.
 */
struct aor_tokencache *aor_tokencache_create(size_t capacity);
/* frees the cache and every entry. NULL is a no-op. */
void aor_tokencache_destroy(struct aor_tokencache *cache);

/* fills *key with SHA-256(salt || token). Returns 0, or -1 on a library failure (then do not cache) */
int aor_tokencache_key(struct aor_tokencache *cache, const char *token, size_t len, struct aor_tokencache_key *key);

/**
 * Looks `key` up at `now_ms` (unix milliseconds). `gen` names the policy the outcome was decided
 * under (the worker's config generation): an entry stored under another generation, or expired,
 * is dropped and is a miss. Returns 1 and fills *out on a hit (its strings live in the cache and
 * stay valid until the next call on this cache), 0 on a miss.
 */
int aor_tokencache_get(struct aor_tokencache *cache, const struct aor_tokencache_key *key, uint64_t gen, int64_t now_ms,
                       struct aor_tokencache_value *out);

/**
 * Stores an outcome for `key` (replacing any entry it has), evicting the least recently used
 * entry when the cache is full. A success lives until min(exp, now + AOR_TOKENCACHE_MAX_TTL_MS);
 * an unknown kid AOR_TOKENCACHE_UNKNOWN_KID_TTL_MS; other refusals AOR_TOKENCACHE_NEGATIVE_TTL_MS.
 * Returns 0 when stored; 1 when the outcome is not cacheable (a success already expired, an
 * internal error, a string of AOR_JWT_ID_MAX bytes or more); -1 on ENOMEM (nothing changed).
 */
int aor_tokencache_put(struct aor_tokencache *cache, const struct aor_tokencache_key *key, uint64_t gen,
                       const struct aor_tokencache_value *value, int64_t now_ms);

/* drops every entry (the statistics stay) */
void aor_tokencache_clear(struct aor_tokencache *cache);

void aor_tokencache_stats(const struct aor_tokencache *cache, struct aor_tokencache_stats *stats);

#endif
