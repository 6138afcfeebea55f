/*
 * proxy — the attempts of one request against its candidate backends (SPEC §5):
 * pick, send, read the status, fail over on 429/5xx/connect error/timeout while
 * nothing reached the client, then stream or send the answer with backpressure.
 */
#ifndef AOR_PROXY_H
#define AOR_PROXY_H

struct aor_request;

/* starts the first attempt; from then on the request answers itself (a reply or a
 * SPEC §4 error) and calls aor_pipeline_finish() once the final status is known */
void aor_proxy_start(struct aor_request *ar);

/* h2o disposed the request (client gone or response complete): cancel what runs */
void aor_proxy_on_dispose(struct aor_request *ar);

/* frees the request's proxy-owned memory (buffers, handles) */
void aor_proxy_free(struct aor_request *ar);

#endif
