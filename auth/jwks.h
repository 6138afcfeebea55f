/*
 * jwks — each JWT issuer's signing keys (SPEC §3 auth.jwt), kept current. A keystore holds
 * the key set (jwk.h) of one issuer and key source: built once from secret_env, read from
 * jwks_file at start and on reload, or fetched — OIDC discovery (openid_config → jwks_uri,
 * issuer checked) or jwks_uri — on ONE uv loop (the fetch loop) and refreshed there.
 * Readers on any thread take the current set without I/O; a token whose kid no key has asks
 * for a refetch (cooldown, single flight). A process-wide registry keeps keystores from the
 * first config that names them to exit, so they survive reloads like backend states.
 */
#ifndef AOR_JWKS_H
#define AOR_JWKS_H

#include <stddef.h>
#include <stdint.h>

struct aor_config;
struct aor_jwks;
struct aor_jwt_issuer_conf;
struct aor_keystore;
struct aor_upstream;
struct uv_loop_s;

/* limits and timings (each limit has a test at limit+1) */
#define AOR_KEYSTORE_MAX_BODY (256 * 1024) /* bytes of a discovery or JWKS response; the transfer is aborted beyond */
#define AOR_KEYSTORE_MAX_URL 2048          /* bytes of a discovered jwks_uri */
#define AOR_KEYSTORE_TIMEOUT_MS 10000      /* one whole HTTP transfer */
#define AOR_KEYSTORE_CONNECT_TIMEOUT_MS 5000
#define AOR_KEYSTORE_REFRESH_S 3600      /* without Cache-Control: max-age */
#define AOR_KEYSTORE_REFRESH_MIN_S 300   /* max-age (and no-cache/no-store) clamped to [MIN, MAX] */
#define AOR_KEYSTORE_REFRESH_MAX_S 3600  /* a key the IdP dropped is trusted at most this long (a longer max-age is ignored) */
#define AOR_KEYSTORE_BACKOFF_MIN_MS 5000 /* after a failed fetch; doubles up to MAX */
#define AOR_KEYSTORE_BACKOFF_MAX_MS 300000

/* why the last fetch or load failed (aor_keystore_stats().last_error); static strings */
extern const char aor_keystore_err_transport[];       /* connect, DNS, TLS verification, timeout, reset */
extern const char aor_keystore_err_http_status[];     /* a status other than 200 (redirects are not followed) */
extern const char aor_keystore_err_too_large[];       /* body over AOR_KEYSTORE_MAX_BODY */
extern const char aor_keystore_err_discovery[];       /* discovery document unusable: not JSON, no (valid) jwks_uri */
extern const char aor_keystore_err_issuer_mismatch[]; /* discovery names another issuer than the configured one */
extern const char aor_keystore_err_jwks[];            /* JWKS not parsable, or without a single usable key */
extern const char aor_keystore_err_file[];            /* jwks_file unreadable */
extern const char aor_keystore_err_nomem[];

struct aor_keystore_stats {
    int ready;              /* a good key set is loaded */
    size_t keys;            /* keys in the current set */
    uint64_t fetches;       /* fetches started; discovery + JWKS count as one */
    uint64_t failures;      /* fetches (or file loads) that failed */
    uint64_t updates;       /* key sets installed */
    unsigned refresh_s;     /* interval chosen from the last good response (0 for secret and file) */
    const char *last_error; /* one of the aor_keystore_err_* above, NULL after a success */
};

/* ---- one keystore ----------------------------------------------------------------------- */

/**
 * A keystore for issuer `ic` (copied: `ic` need not outlive it). A secret issuer gets its HMAC
 * key now (one kid-less key verifying each HS algorithm its length allows; the issuer's
 * `algorithms` policy narrows that), a jwks_file issuer reads its file now (without "oct"
 * keys); a URL issuer has no keys until it is started. A key source that fails to load leaves
 * the keystore not ready with last_error set. Main thread. NULL on ENOMEM or a conf without
 * issuer or key source.
 */
struct aor_keystore *aor_keystore_create(const struct aor_jwt_issuer_conf *ic);

/**
 * Starts fetching for a URL issuer on `loop`, whose transfers go through `up` (the upstream of
 * that loop). Call on the loop's thread, or before that loop runs. The first fetch starts on
 * the loop, never inside this call. A secret or file keystore ignores the call. Returns 0, or
 * -1 when it is already started.
 */
int aor_keystore_start(struct aor_keystore *ks, struct uv_loop_s *loop, struct aor_upstream *up);

/**
 * Cancels the transfer in flight and closes the keystore's handles; their close callbacks run
 * on the next turn of the loop, after which the keystore may be destroyed. On the fetch loop's
 * thread, before the upstream is destroyed. Keys stay readable. Idempotent; a no-op when never started.
 */
void aor_keystore_stop(struct aor_keystore *ks);

/* frees the keystore (readers' retained sets live on). Only after stop's close callbacks ran. NULL is a no-op. */
void aor_keystore_destroy(struct aor_keystore *ks);

/**
 * The current key set with one reference taken (release it with aor_jwks_release), or NULL
 * while none was loaded. Any thread; a mutex and a reference count, no I/O.
 */
struct aor_jwks *aor_keystore_current(struct aor_keystore *ks);

/**
 * Asks for a refetch because a token named a kid no key has. Any thread; never blocks on I/O.
 * The fetch loop starts one only if no fetch began within the issuer's jwks_refetch_cooldown_s
 * (else at the end of the cooldown) and none is in flight (a fetch in flight absorbs the
 * request): a flood of unknown kids costs at most one fetch per cooldown. No-op for secret
 * and file keystores, and for keystores the current config no longer names.
 */
void aor_keystore_request_refetch(struct aor_keystore *ks);

/* re-reads a jwks_file keystore's file (main thread); a bad file keeps the last good set. 0, or -1 (last_error says why) */
int aor_keystore_reload_file(struct aor_keystore *ks);

int aor_keystore_ready(struct aor_keystore *ks);
/* key sets installed so far (any thread, an atomic load): a verified-token cache keyed by it forgets
 * what it learnt from an older set the moment a new one is installed */
uint64_t aor_keystore_updates(const struct aor_keystore *ks);
uint64_t aor_keystore_fetch_count(const struct aor_keystore *ks);
void aor_keystore_stats(struct aor_keystore *ks, struct aor_keystore_stats *stats);
const char *aor_keystore_issuer(const struct aor_keystore *ks);

/* ---- the registry: one keystore per issuer and key source, for the whole process ----------- */

/**
 * Fills out[i] (conf->auth.num_jwt slots) with the keystore of conf->auth.jwt[i]: the one an
 * earlier config made for the same issuer and key source (a jwks_file is re-read; a secret must
 * be the same bytes), else a new one. Keystores `conf` does not name stop refreshing (their keys
 * stay readable for requests of older generations); new URL keystores start on the fetch loop
 * (at once when aor_keystores_start ran, else when it runs). Main thread, at start and on every
 * reload, before the config is published. A URL keystore the new config keeps is refetched at once
 * (discovery included), whatever its cooldown: a reload (SIGHUP) is the operator's lever after a
 * compromise or a key the IdP withdrew. Returns 0, or -1 on ENOMEM (the previous attach stays in
 * force; out is not to be used).
 */
int aor_keystores_attach(const struct aor_config *conf, struct aor_keystore **out);

/* makes `loop` (whose upstream is `up`) the fetch loop. Once; on that loop's thread or before it runs. 0, or -1 */
int aor_keystores_start(struct uv_loop_s *loop, struct aor_upstream *up);

/* stops every keystore (aor_keystore_stop) and the registry's own handle. On the fetch loop's
 * thread after it stopped serving, before its upstream is destroyed; run the loop once afterwards */
void aor_keystores_stop(void);

/* frees every keystore; at exit, after every worker stopped (and aor_keystores_stop's close callbacks ran) */
void aor_keystores_free(void);

/* ---- picking the issuer of a token ----------------------------------------------------------- */

/**
 * Reads the `iss` claim of a compact JWS WITHOUT verifying anything, only to choose which
 * issuer's keys and policy to verify it with (aor_jwt_verify then checks iss exactly). Bounded
 * like the verifier: at most AOR_JWT_MAX_TOKEN bytes, strict base64url, payload JSON depth and
 * duplicate members checked. Copies the issuer NUL-terminated into buf (capacity cap) and
 * returns its length, or -1 when the token is malformed, has no string iss, or it does not fit.
 */
int aor_jwt_peek_issuer(const char *token, size_t len, char *buf, size_t cap);

/* the index in conf->auth.jwt of the issuer named exactly by these bytes, or -1 */
int aor_jwt_issuer_index(const struct aor_config *conf, const char *iss, size_t len);

#endif
