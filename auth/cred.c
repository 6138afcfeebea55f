/* cred.c — see cred.h. This build implements api_key; the Entra ID types come with their issue. */
#include <string.h>
#include "cred.h"

const char *aor_cred_header(const struct aor_backend_conf *backend, struct aor_cred_header *out)
{
    memset(out, 0, sizeof(*out));
    switch (backend->cred.type) {
    case AOR_CRED_NONE:
        return NULL;
    case AOR_CRED_API_KEY:
        if (backend->cred.api_key == NULL)
            return AOR_CRED_ERR_UNAVAILABLE;
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
        return NULL;
    default:
        return AOR_CRED_ERR_UNAVAILABLE;
    }
}
