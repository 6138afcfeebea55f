/*
 * auth — the authenticate stage (SPEC §1 step 1, §3 auth:, §4 401/403): reads the
 * credentials a request carries (Authorization: Bearer JWT, a subscription key in a
 * configured header or ?subscription-key=, a TLS client certificate), checks them per
 * auth.mode and names the tenant. JWTs are verified synchronously against the
 * issuer's current keys (through a per-worker verified-token cache); a subscription
 * key may need one Redis round trip, so the stage can finish later.
 */
#ifndef AOR_AUTH_H
#define AOR_AUTH_H

#include <h2o.h>

struct aor_request;
struct aor_apikey_pending;

#define AOR_AUTH_ID_MAX 256

struct aor_auth {
    int status;              /* 0 = authenticated; else 401, 403 or 503 (key store down; keys_unavailable: no JWKS yet) */
    const char *reason;      /* aoai_router_auth_failures_total{reason}: a fixed, small set */
    const char *description; /* for the client's error message and WWW-Authenticate; never a credential */
    int bearer_challenge;    /* answer with WWW-Authenticate: Bearer ... */
    const char *method;      /* "none", "jwt", "key", "jwt+key", "mtls" */
    char tenant[AOR_AUTH_ID_MAX + 1];
    char subject[AOR_AUTH_ID_MAX];   /* sub (else oid) of a JWT, CN of a certificate */
    char client_id[AOR_AUTH_ID_MAX]; /* azp / appid of a JWT */
    char key_id[9];                  /* first hex digits of a subscription key's SHA-256 */
    /* the credentials found (they point into the request's headers, which outlive the stage) */
    const char *token, *key;
    size_t token_len, key_len;
    int has_token, has_key;
    /* in flight */
    struct aor_apikey_pending *pending;
    h2o_timeout_entry_t key_wait; /* linked while waiting for an issuer's first keys */
    int key_wait_started;         /* 0 never, 1 waiting (counted in the worker), 2 done */
    int64_t key_wait_deadline;    /* uv_now ms */
    void (*on_done)(struct aor_request *ar);
};

/* how long a request whose issuer has no keys yet waits for them (cold start), then 503 */
#define AOR_AUTH_KEY_WAIT_MS 5000
#define AOR_AUTH_MAX_KEY_WAITERS 1024 /* per worker; beyond, the 503 comes at once */
#define AOR_AUTH_KEYS_RETRY_AFTER "5" /* seconds, on that 503 */

/**
 * Runs the stage for `ar` (whose h2o request is `req`). Returns 1 when it finished now
 * (ar->auth filled), or 0 when it goes on: a subscription key lookup is pending, or the token's
 * issuer has no keys yet and the stage waits for the first fetch (on the loop, at most
 * AOR_AUTH_KEY_WAIT_MS; then status 503, reason keys_unavailable). Then `on_done(ar)` is called
 * once, later (never before this returns), unless aor_auth_cancel() ran.
 */
int aor_auth_authenticate(struct aor_request *ar, h2o_req_t *req, void (*on_done)(struct aor_request *ar));

/* stops a pending lookup or wait (the client went away); on_done is not called. Safe when none is pending */
void aor_auth_cancel(struct aor_request *ar);

/* adds WWW-Authenticate to a refusal when the scheme calls for it, and retry-after to a 503 */
void aor_auth_add_challenge(const struct aor_auth *auth, h2o_req_t *req);

#endif
