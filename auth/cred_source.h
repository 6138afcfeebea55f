/*
 * cred_source — between cred.c (the interface the request path calls) and cred_entra.c (the
 * token sources: IMDS, App Service, Entra ID, an external IdP). Not for other modules.
 */
#ifndef AOR_CRED_SOURCE_H
#define AOR_CRED_SOURCE_H

#include <stddef.h>
#include <stdint.h>

struct aor_cred_token;
struct aor_token_source;

/* AOR_CRED_OK with a reference to the current token (value and len point into it), or PENDING or UNAVAILABLE */
int aor_token_source_take(struct aor_token_source *s, struct aor_cred_token **tok, const char **value, size_t *len,
                          uint64_t *serial);
/* the state (AOR_CRED_OK, PENDING or UNAVAILABLE) without taking anything */
int aor_token_source_state(struct aor_token_source *s);
void aor_token_release(struct aor_cred_token *tok);
void aor_token_source_refused(struct aor_token_source *s, uint64_t serial);

#endif
