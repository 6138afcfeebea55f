/*
 * request — struct aor_request, the object the pipeline stages share for one client
 * request. Lifetime: malloc'd when a data-plane request is accepted; h2o's side ends
 * when the request's pool is disposed (req becomes NULL); the upstream side ends when
 * the transfer is done or cancelled. It is freed when both have ended, never inside
 * an upstream callback.
 */
#ifndef AOR_REQUEST_H
#define AOR_REQUEST_H

#include <stdint.h>
#include <h2o.h>
#include "admit.h"
#include "accesslog.h"
#include "auth.h"
#include "cred.h"
#include "balancer.h"
#include "reqbody.h"
#include "routes.h"
#include "upstream_h1.h"
#include "usage.h"

#define AOR_MAX_CANDIDATES 64
#define AOR_REQUEST_ID_MAX 64
#define AOR_MAX_RESPONSE_HEADER_BYTES 65536
#define AOR_STREAM_HIGH_WATER (256 * 1024) /* bytes queued for a slow client before upstream is paused */
#define AOR_BUFFER_MAX (4 * 1024 * 1024)   /* a non-streaming reply larger than this is streamed instead */

struct aor_worker;
struct aor_config;
struct aor_backend_conf;

struct aor_buf {
    char *base;
    size_t len, cap;
};

enum aor_response_mode {
    AOR_MODE_HEADERS, /* waiting for the attempt's status and headers */
    AOR_MODE_DISCARD, /* 429/5xx: the body is dropped, the request fails over */
    AOR_MODE_BUFFER,  /* a JSON reply: collected, sent whole with its length */
    AOR_MODE_STREAM,  /* SSE (or a large reply): forwarded as it arrives */
};

struct aor_request {
    h2o_req_t *req; /* NULL once h2o disposed the request */
    h2o_generator_t generator;
    struct aor_worker *worker;
    struct aor_config *conf; /* reference held until free */
    char id[AOR_REQUEST_ID_MAX + 1];
    int64_t started_ms;
    uint64_t started_ns, upstream_started_ns, first_byte_ns;
    uint64_t ttft_ns;     /* a successful stream's time to its first byte (gen_ai_server_time_to_first_token), else 0 */
    const char *genai_op; /* aor_metrics_genai_operation of the route's op (static) */

    /* what was asked */
    char method[16];
    struct aor_accesslog_client client; /* address, path, user agent for the access log */
    struct aor_route route;
    char deployment[65];   /* logical deployment */
    struct aor_reqbody rb; /* fields read from a JSON body */
    int body_is_json;
    const char *body; /* the client's body (copy owned here) */
    size_t body_len;
    char *body_copy;
    char *attempt_body;       /* body rewritten for the current backend, if any */
    int stream;               /* the client asked for stream: true */
    int64_t estimate;         /* tokens the request may cost */
    int64_t estimate_default; /* the tenant's default_max_tokens when the body names no completion limit: added to the
                                 quota estimate only (admit.c), not to the backend's (balancer) */
    struct aor_auth auth;     /* the authenticate stage's outcome: tenant, subject, method */
    const char *tenant;       /* auth.tenant once authenticated */
    struct aor_admission adm; /* the admit stage's reservation and decision */

    /* where it may go */
    size_t num_cand;
    struct aor_balancer_candidate cand[AOR_MAX_CANDIDATES];
    const struct aor_backend_conf *cand_backend[AOR_MAX_CANDIDATES];
    const char *cand_name[AOR_MAX_CANDIDATES]; /* deployment name on that backend */
    unsigned attempts, throttled, failed;
    unsigned local_failed; /* attempts ended by the router's own shortage (not counted against a backend) */
    int current;           /* candidate of the current attempt, -1 before the first */
    const char *last_error;

    /* the current attempt: one upstream_h1 transfer; its request head lives in req->pool */
    struct aor_upstream_h1_xfer xfer;
    int status;
    enum aor_response_mode mode;
    size_t res_headers_mark; /* req->res.headers.size before any attempt added the backend's */
    char *cred_at;           /* the credential's bytes in the request head, wiped when the attempt ends */
    size_t cred_len;
    uint64_t cred_serial;             /* the token sent (aor_cred_refused on a 401), 0 for a key */
    struct aor_cred_waiter cred_wait; /* queued while the first token of a backend is fetched */
    int cred_waited;                  /* a request waits once (again after a backend's 401) */
    unsigned cred_skipped;            /* candidates skipped for want of a token */
    size_t discarded;                 /* body bytes of a 429/5xx reply read and dropped */
    int64_t cooldown_ms;              /* a 429's retry-after, as a cooldown */
    int cooldown_capped;              /* ... cut to limits.max_cooldown_ms */
    int64_t backend_remaining_tokens;
    int64_t backend_remaining_requests;              /* x-ratelimit-remaining-requests, -1 absent or not a number */
    int64_t backend_reset_tokens_ms;                 /* x-ratelimit-reset-tokens (OpenAI's Go duration), -1 absent or refused */
    int64_t backend_reset_requests_ms;               /* x-ratelimit-reset-requests, likewise */
    const char *backend_reset_bad;                   /* the name of a reset header refused as not a duration (logged), or NULL */
    char backend_reset_bad_value[40];                /* ... its value, printable ASCII only, cut (for the log) */
    size_t backend_reset_bad_len;                    /* ... its whole length */
    char backend_request_id[AOR_REQUEST_ID_MAX + 1]; /* the answering backend's x-request-id, if sane; "" else */

    /* the response to the client */
    int started; /* h2o_start_response called: no failover any more */
    int sending; /* an h2o_send awaits proceed */
    int paused;  /* the upstream transfer is paused (backpressure) */
    int upstream_done;
    int final_sent;
    int abort_after_send; /* the upstream broke while a send was in flight */
    int in_upstream_cb;   /* inside an upstream callback: the request must not be freed */
    struct aor_buf inflight, pending;
    uint64_t bytes_to_client;
    struct aor_sse_scanner sse;
    int strip_usage;   /* usage was asked upstream for the router only: its chunk is not relayed */
    int sse_dropping;  /* the usage-only event's data line was dropped; its blank line goes too */
    int json_overflow; /* a JSON reply over AOR_BUFFER_MAX, relayed as it comes: `tail` keeps its end */
    struct aor_buf tail;
    struct aor_buf carry; /* a partial SSE line while strip_usage (at most AOR_SSE_MAX_LINE) */
    struct aor_usage usage;
    int final_status;

    /* admission (pipeline.c): the data-plane start waits past the read that brought it */
    h2o_linklist_t deferred_link; /* in worker->deferred while `deferred` */
    int deferred;
    uint64_t body_budget; /* bytes held in aor_inflight_body_bytes for this request */
    uint64_t resp_budget; /* bytes of the answer being collected (BUFFER) held in aor_inflight_body_bytes */
};

#endif
