/*
 * accesslog — one JSON line per request on stdout (SPEC §7): time, request id, tenant,
 * auth method, deployment, backend, attempts, status, tokens, durations. Never a
 * credential. Lines are batched per worker and written with one write(2) per batch
 * (at 32 KiB or every 100 ms), so workers never interleave inside a line.
 */
#ifndef AOR_ACCESSLOG_H
#define AOR_ACCESSLOG_H

#include <stdint.h>
#include <uv.h>

struct aor_accesslog;
struct aor_request;

struct aor_accesslog *aor_accesslog_create(uv_loop_t *loop);
void aor_accesslog_write(struct aor_accesslog *log, const struct aor_request *ar);
/* a request answered without the data plane (/healthz, /readyz, /metrics, unknown or malformed
 * paths): same schema, identity and token fields empty. `method` must be a plain token. */
void aor_accesslog_write_plain(struct aor_accesslog *log, const char *id, const char *method, int status, uint64_t started_ns);
void aor_accesslog_flush(struct aor_accesslog *log);
/* flushes, closes the timer; the object is freed in its close callback */
void aor_accesslog_destroy(struct aor_accesslog *log);

#endif
