/*
 * pipeline_internal — what the stages call back into the pipeline for. Not for
 * anything outside the request path.
 */
#ifndef AOR_PIPELINE_INTERNAL_H
#define AOR_PIPELINE_INTERNAL_H

struct aor_request;

/* the final status is known (a reply started, or an error is being sent):
 * account usage and write the access log line. Called exactly once per request. */
void aor_pipeline_finish(struct aor_request *ar);

/* headers every admitted response carries besides the backend's (tenant rate limits) */
void aor_pipeline_add_client_headers(struct aor_request *ar);

/* frees the request if both h2o and the upstream are done with it */
void aor_pipeline_maybe_free(struct aor_request *ar);

#endif
