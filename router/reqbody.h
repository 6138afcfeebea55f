/*
 * reqbody — what the router reads from a JSON request body: `model` (the logical
 * deployment on /v1 paths), `stream`, and the token limits for the estimate; and the
 * body rewritten with another `model` for a backend. One validating pass, no tree.
 */
#ifndef AOR_REQBODY_H
#define AOR_REQBODY_H

#include <stddef.h>
#include <stdint.h>

struct aor_reqbody {
    const char *model_value; /* the value span of "model" (with quotes), NULL if absent */
    size_t model_value_len;
    const char *model; /* its text when a plain string (no escapes) */
    size_t model_len;
    int stream;         /* "stream": true */
    int stream_options; /* the body has a "stream_options" member */
    int include_usage;  /* ... an object with "include_usage": true */
    int64_t max_tokens; /* max_completion_tokens, else max_tokens, else 0 */
};

/* scans `body`; 0, or -1 when it is not one well-formed JSON object or names
 * "model" or "stream" twice (the backend might read the other one) */
int aor_reqbody_scan(const char *body, size_t len, struct aor_reqbody *out);

/**
 * Writes `body` with the model value replaced by the JSON string `model` (a valid
 * deployment name: no character needs escaping) into buf (capacity cap). When the
 * body has no model, one is inserted as the first member. Returns the length, or -1
 * when cap is too small.
 */
int aor_reqbody_with_model(const char *body, size_t len, const struct aor_reqbody *rb, const char *model, size_t model_len,
                           char *buf, size_t cap);

/**
 * Writes `body` with `"stream_options":{"include_usage":true}` added as the first member
 * into buf (capacity cap): for a stream whose client did not ask for usage (only when the
 * body has no stream_options). Returns the length, or -1 when cap is too small.
 */
int aor_reqbody_with_stream_usage(const char *body, size_t len, char *buf, size_t cap);
#define AOR_REQBODY_STREAM_USAGE_EXTRA 40 /* bytes the above adds */

/* the tokens a request may cost: body bytes / 4 + the requested completion limit */
int64_t aor_reqbody_estimate(const struct aor_reqbody *rb, size_t body_len);

#endif
