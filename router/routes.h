/*
 * routes — what a request path asks for (SPEC §4), and the upstream path a backend
 * gets for it (SPEC §5). Pure string work on the request's bytes: no allocation
 * except the output buffer the caller passes.
 */
#ifndef AOR_ROUTES_H
#define AOR_ROUTES_H

#include <stddef.h>
#include "config.h"

enum aor_route_kind {
    AOR_ROUTE_NOT_FOUND = 0, /* unknown path: 404 */
    AOR_ROUTE_BAD,           /* a data-plane path that is malformed: 400 invalid_request */
    AOR_ROUTE_HEALTHZ,
    AOR_ROUTE_READYZ,
    AOR_ROUTE_METRICS,
    AOR_ROUTE_STATUS,      /* /status: HTML, metrics listener only */
    AOR_ROUTE_STATUS_JSON, /* /status.json */
    AOR_ROUTE_DEPLOYMENT,  /* /openai/deployments/{name}/{op} */
    AOR_ROUTE_V1,          /* /openai/v1/{op} or /v1/{op}: deployment is the body's model */
    AOR_ROUTE_RAW,         /* set by aor_route_authorize: an operator-listed path outside those, forwarded as is */
};

/* what aor_route_authorize decided */
enum aor_route_access {
    AOR_ACCESS_INFERENCE = 0,      /* POST to an inference operation (README "HTTP surface") */
    AOR_ACCESS_PASSTHROUGH,        /* listed in the config's passthrough: */
    AOR_ACCESS_METHOD_NOT_ALLOWED, /* an inference path with another method: 405, allow: POST */
    AOR_ACCESS_NOT_FOUND,          /* anything else: 404 not_found, nothing upstream */
    AOR_ACCESS_MODELS,             /* GET /openai/v1/models[/{name}], /v1/models[/{name}]: answered by the router */
};

struct aor_route {
    enum aor_route_kind kind;
    const char *deployment; /* DEPLOYMENT: points into the path */
    size_t deployment_len;
    const char *op; /* "chat/completions", "embeddings", ... */
    size_t op_len;
    const char *query; /* after '?', NULL when none */
    size_t query_len;
    const char *path; /* the whole path without its query */
    size_t path_len;
    int passthrough; /* aor_route_authorize allowed it through the config's passthrough: */
    int models;      /* AOR_ACCESS_MODELS: the router lists its deployments (op "models" or "models/{name}") */
};

/* classifies `path` (with its query). Never fails: unknown → NOT_FOUND, malformed → BAD */
void aor_route_parse(const char *path, size_t len, struct aor_route *out);

/**
 * Decides whether `method` on `route` (parsed by aor_route_parse, kind NOT_FOUND, DEPLOYMENT
 * or V1) may be forwarded with the router's credential: the inference operations by POST,
 * or what `conf->passthrough` lists (exact path or prefix; only paths whose every segment is
 * a valid name, so no "..", "%2e" or empty segment can reach another operation). For a
 * passthrough it sets route->passthrough, and a NOT_FOUND path becomes AOR_ROUTE_RAW.
 * GET of the v1 `models` (or `models/{name}`) operation, when passthrough does not list it, is
 * AOR_ACCESS_MODELS (route->models set): the router answers with its logical deployments.
 */
enum aor_route_access aor_route_authorize(struct aor_route *route, const char *method, size_t method_len,
                                          const struct aor_config *conf);

/* 1 when `name` is an acceptable deployment/model name: [A-Za-z0-9._-], 1..64 bytes, not "." or ".." */
int aor_route_valid_name(const char *name, size_t len);

/**
 * Writes the upstream path (from the first '/', with query) for `route` on a backend
 * of `provider`, `upstream_name` being the backend's name for the deployment.
 * Query parameter `subscription-key` (a client credential) is dropped, every occurrence and
 * spelling (aor_route_param_named); `api-version`
 * is dropped for provider openai. Returns the length written, or -1 if `cap` is too small.
 */
int aor_route_upstream_path(const struct aor_route *route, enum aor_provider provider, const char *upstream_name,
                            size_t upstream_len, char *buf, size_t cap);

/**
 * 1 when the query parameter `p` (`plen` bytes, "name" or "name=value") is named `name` (lower
 * case) once its name is percent-decoded and compared case-insensitively: Subscription-Key,
 * subscription%2Dkey and SUBSCRIPTION%2dKEY all name "subscription-key". 0 otherwise.
 */
int aor_route_param_named(const char *p, size_t plen, const char *name);

/**
 * Finds query parameter `name` (exact, not decoded). Returns 1 and sets *value and *value_len
 * when present, 0 when absent.
 */
int aor_route_query_param(const char *query, size_t query_len, const char *name, const char **value, size_t *value_len);

#endif
