/*
 * upstream_h1 — the data plane's client to the backends: h2o 2.2.5's http1client on a
 * keep-alive socket pool per backend origin, one set per worker, on the worker's loop
 * (what h2o's own reverse proxy uses; bench/clientcmp/ measured it against libcurl).
 * A transfer sends one request (head + fixed-length body) and reports the response head,
 * its body as it arrives, and its end, once. Bounds: a connect timeout (DNS, TCP, TLS)
 * and a whole-transfer deadline. TLS: one client SSL_CTX for the process (system CAs),
 * peer and host name verified on every new connection. The control plane keeps libcurl
 * (upstream.h).
 */
#ifndef AOR_UPSTREAM_H1_H
#define AOR_UPSTREAM_H1_H

#include <stdint.h>
#include <h2o.h>

/* how a transfer failed: the `errstr` of its done callback (NULL when the response is complete); compare pointers */
extern const char aor_upstream_h1_err_connect[]; /* "connect failed": DNS, TCP or TLS (verification included) */
extern const char aor_upstream_h1_err_timeout[]; /* "timeout": the connect bound or the whole-transfer deadline */
extern const char aor_upstream_h1_err_io[];      /* "connection failed": broken or malformed response after the connect */

struct aor_upstream_h1;
struct aor_upstream_h1_xfer;
struct aor_upstream_h1_origin;
struct aor_upstream_h1_timing;

/* the status line and headers (names lower-case; valid during the call only). Called once */
typedef void (*aor_upstream_h1_head_cb)(struct aor_upstream_h1_xfer *x, int status, const h2o_header_t *headers,
                                        size_t num_headers);
/* body bytes as they arrive (chunked coding removed; valid during the call only) */
typedef void (*aor_upstream_h1_body_cb)(struct aor_upstream_h1_xfer *x, const char *data, size_t len);
/* the transfer is over: errstr NULL (complete) or one of aor_upstream_h1_err_*; x->detail says more */
typedef void (*aor_upstream_h1_done_cb)(struct aor_upstream_h1_xfer *x, const char *errstr);

/* where a backend URL sends its requests; owned by the worker's upstream_h1, valid until it is freed */
struct aor_upstream_h1_target {
    h2o_iovec_t authority;   /* for the Host header: host[:port] as the URL writes it */
    h2o_iovec_t path_prefix; /* what the URL has after the authority ("" or e.g. "/v1") */
    struct aor_upstream_h1_origin *origin;
    char *url;
    size_t url_len;
};

/*
 * One transfer, embedded in the caller's object. The caller sets the callbacks; the rest is
 * the module's. Between a successful start and the done callback (or a cancel) the object
 * must stay where it is; inside any of its callbacks the caller may cancel it, start it
 * again, or (once it is no longer active) free it — nothing touches it after a callback
 * that could have done so.
 */
struct aor_upstream_h1_xfer {
    aor_upstream_h1_head_cb on_head;
    aor_upstream_h1_body_cb on_body;
    aor_upstream_h1_done_cb on_done;
    int active;         /* between a successful start and done/cancel */
    const char *detail; /* h2o's or OpenSSL's words for the last error (static strings) */
    /* private */
    struct aor_upstream_h1_timing *timing;
    struct aor_upstream_h1_origin *origin;
    h2o_http1client_t *client;
    h2o_iovec_t reqbufs[2];
    int is_head;
    int reused;        /* the connection came from the pool */
    int stale_retries; /* tries on another connection after pooled ones turned out closed */
    int connecting;    /* inside h2o_http1client_connect_with_pool */
    const char *sync_error;
    int paused;
    h2o_socket_cb reader; /* http1client's body reader, saved while paused */
    int *cancelled;       /* set while a callback runs: where aor_upstream_h1_cancel reports */
    h2o_timeout_entry_t deadline;
    h2o_linklist_t link; /* in h1->active */
};

/**
 * A worker's client: connection pools keyed by backend origin, created on first use (at most
 * AOR_UPSTREAM_H1_MAX_ORIGINS per worker, kept until the worker ends). `getaddr` is the
 * worker's h2o resolver receiver (h2o_context_t.receivers.hostinfo_getaddr). Takes a reference
 * to the process-wide TLS client context (created by the first call). NULL on failure.
 */
struct aor_upstream_h1 *aor_upstream_h1_create(uv_loop_t *loop, h2o_multithread_receiver_t *getaddr);

/* cancels every active transfer (their callbacks are not called), closes pooled connections
 * and starts closing the module's loop handles; the loop must run once more (UV_RUN_NOWAIT)
 * before aor_upstream_h1_free. NULL is a no-op */
void aor_upstream_h1_close(struct aor_upstream_h1 *h1);
/* frees what aor_upstream_h1_close left, after the loop ran its close callbacks. NULL is a no-op */
void aor_upstream_h1_free(struct aor_upstream_h1 *h1);

#define AOR_UPSTREAM_H1_MAX_ORIGINS 256

/* the target for a backend URL ("http[s]://host[:port][/prefix]"), NULL if the URL is unusable
 * or the table is full (logged). Looked up per attempt: a memcmp per known URL */
const struct aor_upstream_h1_target *aor_upstream_h1_target(struct aor_upstream_h1 *h1, const char *url, size_t url_len);

/**
 * Sends `head` (the complete request head, CRLF CRLF included) and `body` to `t`'s origin on a
 * pooled or new connection. Both buffers must stay unchanged until the transfer ends.
 * `is_head`: the method is HEAD (no body in the response). The connect phase (pool wait, DNS,
 * TCP, TLS handshake) is bounded by connect_timeout_ms, the whole transfer by total_timeout_ms.
 * Returns 0 (then exactly one done callback follows, never before this returns, unless the
 * transfer is cancelled) or -1 (nothing started, no callback; x->detail says why).
 */
int aor_upstream_h1_start(struct aor_upstream_h1 *h1, struct aor_upstream_h1_xfer *x, const struct aor_upstream_h1_target *t,
                          h2o_iovec_t head, h2o_iovec_t body, int is_head, uint64_t connect_timeout_ms, uint64_t total_timeout_ms);

/* stops an active transfer and closes its connection; no callback follows. Safe inside the
 * transfer's own callbacks and on an inactive transfer */
void aor_upstream_h1_cancel(struct aor_upstream_h1_xfer *x);

/* backpressure: stop / resume reading the response body from the socket (the peer's send
 * window then fills). Only after the head callback; no-ops when not applicable */
void aor_upstream_h1_pause(struct aor_upstream_h1_xfer *x);
void aor_upstream_h1_resume(struct aor_upstream_h1_xfer *x);

#endif
