/*
 * cred — how the router authenticates to a backend (SPEC §1 step 4). Clients never hold
 * these. `api_key` is read at load. The keyless types (managed_identity, also through App
 * Service's IDENTITY_ENDPOINT; workload_identity; client_secret; oidc_federation) get an
 * access token from a token source: one per identity and resource for the whole process,
 * shared by every backend (and worker) that names the same identity, refreshed ahead of
 * expiry on ONE loop (the fetch loop, worker 0's) through libcurl, single flight. Applying a
 * credential never waits on I/O: the request path takes a reference to the current token.
 * A request that finds the first token still being fetched may wait for it (bounded).
 * The token sources are keyed by (identity, resource): a later user of another resource
 * (Azure Cache for Redis: https://redis.azure.com) gets its own source and cache from the
 * same code by naming that resource (aor_cred_conf.resource).
 */
#ifndef AOR_CRED_H
#define AOR_CRED_H

#include <stddef.h>
#include <stdint.h>
#include "config.h"

struct aor_cred_token;
struct aor_cred_waitq;
struct aor_token_source;
struct aor_upstream;
struct uv_loop_s;

#define AOR_CRED_TIMEOUT_MS 10000             /* one whole token call */
#define AOR_CRED_CONNECT_TIMEOUT_MS 5000      /* its connect */
#define AOR_CRED_INVALIDATE_COOLDOWN_MS 10000 /* a backend's 401 drops a token at most this often per source */
#define AOR_CRED_MAX_WAITERS 1024             /* requests per worker waiting for a first token */
#define AOR_CRED_MAX_FILE 16384               /* bytes of a workload identity token file */

/* what aor_cred_header() says */
#define AOR_CRED_OK 0
#define AOR_CRED_PENDING 1     /* no token yet, the first (or, after a 401, the next) is being fetched: may wait */
#define AOR_CRED_UNAVAILABLE 2 /* no usable token (the token endpoint fails, or no key): skip the backend */

/* read by /metrics (atomics): seconds until expiry, refresh failures */
struct aor_cred_stats {
    int64_t expires_at_ms;     /* unix ms of the current token's expiry, 0 = none (atomic) */
    uint64_t refresh_failures; /* token calls that failed (atomic) */
};

/* the header that carries a backend credential: `name: prefix secret`. The secret must never reach a log */
struct aor_cred_header {
    const char *name;
    size_t name_len;
    const char *prefix; /* "" or "Bearer " */
    size_t prefix_len;
    const char *secret;
    size_t secret_len;
    struct aor_cred_token *hold; /* the token's reference (NULL for api_key); dropped by aor_cred_header_release */
    uint64_t serial;             /* which token this was (aor_cred_refused), 0 for api_key */
};

/**
 * The backend's credential header: `api-key` for Azure with api_key, `Authorization: Bearer`
 * for provider openai and for every token type. Returns AOR_CRED_OK with *out filled
 * (out->name NULL when the backend takes no credential), AOR_CRED_PENDING or
 * AOR_CRED_UNAVAILABLE (out->name NULL). Any worker thread; a mutex, no I/O. After OK the
 * caller copies the pieces and calls aor_cred_header_release(out) (also harmless otherwise).
 */
int aor_cred_header(const struct aor_backend_conf *backend, struct aor_cred_header *out);
void aor_cred_header_release(struct aor_cred_header *h);

/**
 * The current access token of a keyless credential (any user: a backend's `auth:`, later
 * `redis.auth` for AUTH <object id> <token>): out->secret/secret_len/hold/serial filled (no header
 * name). AOR_CRED_OK, PENDING or UNAVAILABLE (also for api_key / none, which have no token).
 * Release with aor_cred_header_release(). Any thread; no I/O.
 */
int aor_cred_token(const struct aor_cred_conf *cred, struct aor_cred_header *out);

/* 1 when aor_cred_header() would answer OK now (for /readyz): api_key and none always */
int aor_cred_usable(const struct aor_backend_conf *backend);

/**
 * The backend answered 401 to the token `serial`: if that is still the source's current token
 * (and no other 401 dropped one within AOR_CRED_INVALIDATE_COOLDOWN_MS), the token is dropped
 * and a refresh starts at once — one per token however many requests saw the 401. Requests
 * that come meanwhile wait for it like at a cold start. Any thread. No-op for api_key.
 */
void aor_cred_refused(const struct aor_cred_conf *cred, uint64_t serial);

/* ---- the token sources: one registry for the process (like the JWKS keystores) ---------- */

/**
 * Gives each keyless credential of `conf` its source (cred.source, cred.stats): the one an
 * earlier config made for the same identity and resource (its token is kept), else a new one.
 * Sources the config no longer names stop refreshing. Today the backends' `auth:`; `redis.auth`
 * joins by adding its aor_cred_conf to creds_of() in cred_entra.c (its resource
 * https://redis.azure.com makes it a source and a cache of its own). Main thread, before the
 * config is published. 0, or -1 on ENOMEM.
 */
int aor_creds_attach(struct aor_config *conf);

/* makes `loop` (whose libcurl upstream is `up`) the fetch loop. Once, on that loop's thread or before it runs */
int aor_creds_start(struct uv_loop_s *loop, struct aor_upstream *up);

/* stops every source's calls and closes their handles; on the fetch loop's thread, before `up` goes. Run the loop once after */
void aor_creds_stop(void);

/* frees the sources (tokens and secrets wiped); at exit after every worker stopped */
void aor_creds_free(void);

/* ---- waiting for a first token (per worker) -------------------------------------------- */

struct aor_cred_waiter;
typedef void (*aor_cred_wait_cb)(struct aor_cred_waiter *waiter);

/* embed in the waiting object; owned by the wait queue while queued */
struct aor_cred_waiter {
    struct aor_cred_waiter *prev, *next;
    struct aor_cred_waitq *q;
    struct aor_token_source *src;
    uint64_t deadline_ms; /* uv_hrtime() based */
    aor_cred_wait_cb cb;
};

/* a worker's queue of waiting requests, woken (on that worker's loop) when a source gets a token or fails */
struct aor_cred_waitq *aor_cred_waitq_create(struct uv_loop_s *loop);
/* drops every waiter (their callbacks are not called) and the watch, and closes the handles; the loop must run once more */
void aor_cred_waitq_close(struct aor_cred_waitq *q);

/**
 * One watcher per queue (a worker's Redis connection with redis.auth): cb(data) runs on the queue's
 * loop, after the waiters, whenever a source got a token (a first one or a refresh) or the call for
 * a first one failed — the moment to look at aor_cred_token() again. NULL cb clears it. Loop thread.
 */
void aor_cred_waitq_watch(struct aor_cred_waitq *q, void (*cb)(void *data), void *data);

/**
 * Queues `waiter` until the credential's source is no longer PENDING or `wait_ms` has passed since
 * it became pending (a source that stays pending does not make every later request wait the
 * whole time again). Then cb runs on the queue's loop, never before this returns; the caller
 * asks for the token again. Returns 0 when queued, -1 when not (the source is not
 * pending, the wait is already over, or AOR_CRED_MAX_WAITERS wait on this worker).
 */
int aor_cred_wait(struct aor_cred_waitq *q, const struct aor_cred_conf *cred, struct aor_cred_waiter *waiter, uint64_t wait_ms,
                  aor_cred_wait_cb cb);

/* unqueues a waiter (no callback); safe when it is not queued */
void aor_cred_wait_cancel(struct aor_cred_waiter *waiter);

#endif
