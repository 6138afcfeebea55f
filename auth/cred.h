/*
 * cred — how the router authenticates to a backend (SPEC §1 step 4). Clients never
 * hold these. Applying a credential never waits: token-based types (managed identity,
 * workload identity, ...) will keep a token refreshed ahead of expiry on the loop, so
 * the request path only copies the current one.
 */
#ifndef AOR_CRED_H
#define AOR_CRED_H

#include <curl/curl.h>
#include "config.h"

#define AOR_CRED_ERR_UNAVAILABLE "credential unavailable"

/**
 * Appends the backend's credential header to *headers (`api-key` for Azure,
 * `Authorization: Bearer` for provider openai). Returns NULL on success, or
 * AOR_CRED_ERR_UNAVAILABLE when no credential can be supplied now (the attempt fails
 * over like a connect error).
 */
const char *aor_cred_apply(const struct aor_backend_conf *backend, struct curl_slist **headers);

#endif
