/* cred.c — see cred.h. api_key here; the token types' sources live in cred_entra.c. */
#include <string.h>
#include "cred.h"
#include "cred_source.h"

static int token_type(enum aor_cred_type t)
{
    return t == AOR_CRED_MANAGED_IDENTITY || t == AOR_CRED_WORKLOAD_IDENTITY || t == AOR_CRED_CLIENT_SECRET ||
           t == AOR_CRED_OIDC_FEDERATION || t == AOR_CRED_OPENAI_WIF;
}

int aor_cred_header(const struct aor_backend_conf *backend, struct aor_cred_header *out)
{
    int rc;

    memset(out, 0, sizeof(*out));
    switch (backend->cred.type) {
    case AOR_CRED_NONE:
        return AOR_CRED_OK;
    case AOR_CRED_API_KEY:
        if (backend->cred.api_key == NULL)
            return AOR_CRED_UNAVAILABLE;
        if (backend->provider == AOR_PROVIDER_OPENAI) {
            out->name = "Authorization";
            out->prefix = "Bearer ";
        } else {
            out->name = "api-key";
            out->prefix = "";
        }
        out->name_len = strlen(out->name);
        out->prefix_len = strlen(out->prefix);
        out->secret = backend->cred.api_key;
        out->secret_len = strlen(backend->cred.api_key);
        return AOR_CRED_OK;
    default:
        if ((rc = aor_cred_token(&backend->cred, out)) != AOR_CRED_OK)
            return rc;
        out->name = "Authorization";
        out->name_len = sizeof("Authorization") - 1;
        out->prefix = "Bearer ";
        out->prefix_len = sizeof("Bearer ") - 1;
        return AOR_CRED_OK;
    }
}

int aor_cred_token(const struct aor_cred_conf *cred, struct aor_cred_header *out)
{
    memset(out, 0, sizeof(*out));
    if (!token_type(cred->type) || cred->source == NULL)
        return AOR_CRED_UNAVAILABLE;
    return aor_token_source_take(cred->source, &out->hold, &out->secret, &out->secret_len, &out->serial);
}

void aor_cred_header_release(struct aor_cred_header *h)
{
    aor_token_release(h->hold);
    h->hold = NULL;
    h->secret = NULL;
    h->secret_len = 0;
}

int aor_cred_usable(const struct aor_backend_conf *backend)
{
    switch (backend->cred.type) {
    case AOR_CRED_NONE:
        return 1;
    case AOR_CRED_API_KEY:
        return backend->cred.api_key != NULL;
    default:
        return token_type(backend->cred.type) && backend->cred.source != NULL &&
               aor_token_source_state(backend->cred.source) == AOR_CRED_OK;
    }
}

void aor_cred_refused(const struct aor_cred_conf *cred, uint64_t serial)
{
    if (token_type(cred->type) && cred->source != NULL && serial != 0)
        aor_token_source_refused(cred->source, serial);
}
