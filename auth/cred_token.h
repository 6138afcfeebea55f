/*
 * cred_token — the pure part of keyless backend credentials: reading a token endpoint's
 * JSON answer (IMDS, App Service, Entra ID v2.0, an Auth0-style IdP) and the schedule
 * (when to refresh, how long a token may still be sent, the backoff after a failure).
 * No I/O and no clock of its own: every function takes `now`, so tests move time by hand.
 */
#ifndef AOR_CRED_TOKEN_H
#define AOR_CRED_TOKEN_H

#include <stddef.h>
#include <stdint.h>

#define AOR_CRED_MAX_TOKEN 16384          /* bytes of an access token (Entra's are 1-4 KiB) */
#define AOR_CRED_MAX_BODY (64 * 1024)     /* bytes of a token endpoint's answer; the transfer is aborted beyond */
#define AOR_CRED_MIN_LIFETIME_MS 1000     /* a token that lives less than this is refused */
#define AOR_CRED_MAX_LIFETIME_MS 86400000 /* a longer expires_in/expires_on is cut to this (24 h: MI's longest) */
#define AOR_CRED_MIN_REFRESH_MS 1000      /* a token is never refreshed sooner than this after it came */
#define AOR_CRED_REFRESH_IN_FLOOR_MS                                                                                               \
    30000                            /* an endpoint's refresh_in brings a refresh no sooner than this (nor than the lifetime's) */
#define AOR_CRED_BACKOFF_MIN_MS 1000 /* first retry after a failed call (jittered), doubling up to MAX */
#define AOR_CRED_BACKOFF_MAX_MS 30000
#define AOR_CRED_MAX_ERROR 64              /* characters of an OAuth `error` kept for the log */
#define AOR_CRED_MAX_ERROR_DESCRIPTION 300 /* characters of an `error_description` (or App Service `message`) kept */

/* why an answer was refused (aor_cred_parse_response) */
#define AOR_CRED_E_JSON (-1)   /* not a JSON object (or too deep, duplicate members) */
#define AOR_CRED_E_TOKEN (-2)  /* no access_token, empty, over AOR_CRED_MAX_TOKEN, or bytes outside visible ASCII */
#define AOR_CRED_E_EXPIRY (-3) /* neither expires_in nor expires_on usable, or the token lives under the minimum */
#define AOR_CRED_E_TYPE (-4)   /* token_type present and not Bearer */

struct aor_cred_response {
    size_t token_len;      /* the token was copied into the caller's buffer, NUL-terminated */
    int64_t lifetime_ms;   /* from now; clamped to AOR_CRED_MAX_LIFETIME_MS */
    int64_t refresh_in_ms; /* the endpoint's refresh_in, -1 when absent or unusable */
    /* an OAuth error answer's fields (printable, bounded copies; "" when absent), also filled on failure */
    char error[AOR_CRED_MAX_ERROR + 1];
    char error_description[AOR_CRED_MAX_ERROR_DESCRIPTION + 1];
};

/**
 * Reads a token answer: access_token; expires_in (seconds, number or decimal string, preferred
 * as it does not depend on clocks agreeing) else expires_on (unix seconds, number or decimal
 * string, taken against `now_wall_ms`); refresh_in; token_type (must be Bearer if present).
 * The token goes into `tok` (capacity `cap`, at least AOR_CRED_MAX_TOKEN + 1). An error answer's
 * `error`/`error_description` (or App Service's `message`) are copied into `out` for the log
 * whatever the outcome. Returns 0, or one of AOR_CRED_E_*. Never copies the token into `out`.
 */
int aor_cred_parse_response(const char *body, size_t len, int64_t now_wall_ms, char *tok, size_t cap,
                            struct aor_cred_response *out);

/* the error text of an AOR_CRED_E_* code, for a log line */
const char *aor_cred_parse_error(int code);

/**
 * How long after a token arrived it is refreshed: when a third of its lifetime remains, or
 * 5 minutes if that is earlier and at most half of the lifetime; sooner if the endpoint said
 * refresh_in, but not sooner than AOR_CRED_REFRESH_IN_FLOOR_MS (or the lifetime's point, if that is
 * sooner: a hostile refresh_in of 1 s must not make a poller of the router); never sooner than
 * AOR_CRED_MIN_REFRESH_MS.
 */
int64_t aor_cred_refresh_after_ms(int64_t lifetime_ms, int64_t refresh_in_ms);

/* a token is sent only while more than this is left of it (a sixth of its lifetime, at most 10 s) */
int64_t aor_cred_send_margin_ms(int64_t lifetime_ms);

/* the wait before retry number `failures` (1 = the first retry): exponential, equal jitter from `rnd` */
int64_t aor_cred_backoff_ms(unsigned failures, uint32_t rnd);

/* 1 when the token may go into an HTTP header as is: 1..AOR_CRED_MAX_TOKEN bytes of 0x21..0x7e */
int aor_cred_token_ok(const char *s, size_t len);

#endif
