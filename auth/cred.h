/*
 * cred — how the router authenticates to a backend (SPEC §1 step 4). Clients never
 * hold these. Applying a credential never waits: token-based types (managed identity,
 * workload identity, ...) will keep a token refreshed ahead of expiry on the loop, so
 * the request path only copies the current one.
 */
#ifndef AOR_CRED_H
#define AOR_CRED_H

#include <stddef.h>
#include "config.h"

#define AOR_CRED_ERR_UNAVAILABLE "credential unavailable"

/* the header that carries a backend credential: `name: prefix secret`. The pieces are
 * the credential's own memory; the secret must never reach a log */
struct aor_cred_header {
    const char *name;
    size_t name_len;
    const char *prefix; /* "" or "Bearer " */
    size_t prefix_len;
    const char *secret;
    size_t secret_len;
};

/**
 * The backend's credential header (`api-key` for Azure, `Authorization: Bearer` for
 * provider openai). Returns NULL with *out filled (out->name NULL when the backend takes
 * no credential), or AOR_CRED_ERR_UNAVAILABLE when none can be supplied now (the attempt
 * fails over like a connect error). The pieces stay valid while the caller holds the
 * config reference and does not return to the loop: copy them before that.
 */
const char *aor_cred_header(const struct aor_backend_conf *backend, struct aor_cred_header *out);

#endif
