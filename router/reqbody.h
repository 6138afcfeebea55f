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
    int stream;                /* "stream": true */
    int stream_options;        /* the body has a "stream_options" member (null or an object) */
    int include_usage;         /* ... an object with "include_usage": true */
    const char *options_value; /* the value span of "stream_options", NULL if absent */
    size_t options_value_len;
    const char *usage_value; /* the value span of its "include_usage" (false or null here), NULL if absent */
    size_t usage_value_len;
    int64_t max_tokens; /* max_completion_tokens, else max_tokens, else 0 */
};

/* scans `body`; 0, or -1 when it is not one well-formed JSON object, names "model",
 * "stream" or "stream_options" twice (the backend might read the other one), spells a
 * top-level member name with an escape, or has a "stream_options" that is neither null nor
 * an object, or that names "include_usage" twice, with an escape, or with a value other
 * than true, false or null (the router could not tell whether the backend sends usage) */
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
 * Writes `body` (scanned into `rb`) into buf (capacity cap) so that it asks for
 * stream_options.include_usage: for a stream whose client did not ask for usage
 * (rb->include_usage 0). No stream_options: `"stream_options":{"include_usage":true}` is added
 * as the first member; `"stream_options":null` becomes that object; an object keeps its
 * other members and gets `"include_usage":true` (first), or its include_usage value
 * (false or null) replaced by true. When `out` is not NULL it receives `rb` for the new body
 * (spans pointing into buf). Returns the length, or -1 when cap is too small.
 */
int aor_reqbody_with_stream_usage(const char *body, size_t len, const struct aor_reqbody *rb, char *buf, size_t cap,
                                  struct aor_reqbody *out);
#define AOR_REQBODY_STREAM_USAGE_EXTRA 40 /* bytes the above adds at most */

/* the tokens a request may cost: body bytes / 4 + the requested completion limit */
int64_t aor_reqbody_estimate(const struct aor_reqbody *rb, size_t body_len);

/*
 * The completion tokens a quota estimate adds for a body that names no completion limit (no
 * positive max_completion_tokens / max_tokens / max_output_tokens): `dflt` (the tenant's
 * default_max_tokens) when `op` is an operation that generates text (chat/completions,
 * completions, responses); 0 otherwise, and 0 when the body names a limit. `op` may be NULL.
 */
int64_t aor_reqbody_default_completion(const struct aor_reqbody *rb, const char *op, size_t op_len, int64_t dflt);

#endif
