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

/* the tokens a request may cost: body bytes / 4 + the requested completion limit */
int64_t aor_reqbody_estimate(const struct aor_reqbody *rb, size_t body_len);

#endif
