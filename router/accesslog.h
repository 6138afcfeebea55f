/*
 * accesslog — one JSON line per request on stdout (SPEC §7): time, request id, tenant,
 * auth method, subject, key id, method, path (no query), client address, user agent,
 * deployment, backend, attempts, status, tokens, durations, and the error (why a request was
 * refused or failed). Never a credential. Lines are batched per worker and written with one write(2) per batch
 * (at 32 KiB or every 100 ms), so workers never interleave inside a line.
 */
#ifndef AOR_ACCESSLOG_H
#define AOR_ACCESSLOG_H

#include <stdint.h>
#include <h2o.h>
#include <uv.h>

struct aor_accesslog;
struct aor_request;

#define AOR_ACCESSLOG_PATH_MAX 256 /* bytes of the path logged (longer: cut) */
#define AOR_ACCESSLOG_UA_MAX 256   /* bytes of the user agent logged (longer: cut) */

/* what a line tells about the client, copied out of h2o's request (a data-plane line is written
 * when h2o may already be disposing of it) */
struct aor_accesslog_client {
    char address[48];                          /* the peer's IP address, "" if unknown */
    char path[AOR_ACCESSLOG_PATH_MAX + 1];     /* the path without its query (a query may carry a key) */
    char user_agent[AOR_ACCESSLOG_UA_MAX + 1]; /* raw bytes (escaped when written), "" if none */
};

/* fills `c` from `req` (bounded copies) */
void aor_accesslog_capture(struct aor_accesslog_client *c, h2o_req_t *req);

struct aor_accesslog *aor_accesslog_create(uv_loop_t *loop);
void aor_accesslog_write(struct aor_accesslog *log, const struct aor_request *ar);
/* a request answered without the data plane (/healthz, /readyz, /metrics, unknown or malformed
 * paths): same schema, identity and token fields empty; method, path, client and user agent taken
 * from `req`, `error` a fixed code ("" or NULL for none) */
void aor_accesslog_write_req(struct aor_accesslog *log, h2o_req_t *req, const char *id, const char *error, uint64_t started_ns);
void aor_accesslog_flush(struct aor_accesslog *log);
/* flushes, closes the timer; the object is freed in its close callback */
void aor_accesslog_destroy(struct aor_accesslog *log);

#endif
