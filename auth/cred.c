/* cred.c — see cred.h. This build implements api_key; the Entra ID types come with their issue. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cred.h"

static int append(struct curl_slist **headers, const char *prefix, const char *secret)
{
    size_t len = strlen(prefix) + strlen(secret) + 1;
    char stackbuf[512], *line = len <= sizeof(stackbuf) ? stackbuf : malloc(len);
    struct curl_slist *l;

    if (line == NULL)
        return -1;
    memcpy(line, prefix, strlen(prefix));
    memcpy(line + strlen(prefix), secret, strlen(secret) + 1);
    l = curl_slist_append(*headers, line);
    /* the line held a secret: do not leave it in freed or stack memory */
    memset(line, 0, len);
    if (line != stackbuf)
        free(line);
    if (l == NULL)
        return -1;
    *headers = l;
    return 0;
}

const char *aor_cred_apply(const struct aor_backend_conf *backend, struct curl_slist **headers)
{
    switch (backend->cred.type) {
    case AOR_CRED_NONE:
        return NULL;
    case AOR_CRED_API_KEY:
        if (backend->cred.api_key == NULL)
            return AOR_CRED_ERR_UNAVAILABLE;
        if (append(headers,
                   backend->provider == AOR_PROVIDER_OPENAI ? "Authorization: Bearer " : "api-key: ", backend->cred.api_key) != 0)
            return AOR_CRED_ERR_UNAVAILABLE;
        return NULL;
    default:
        return AOR_CRED_ERR_UNAVAILABLE;
    }
}
