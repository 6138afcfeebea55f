/*
 * upstream_h1 — the data plane's HTTP/1.1 client to the backends, our own over h2o_socket_t
 * on the worker's libuv loop: one connection pool per backend origin per worker, idle
 * keep-alive connections kept on the loop with a read armed (a backend closing one is seen
 * at once), at most `max_conns` connections per origin (over it a transfer waits, FIFO,
 * bounded by the connect timeout). A transfer sends one request (head + fixed-length body)
 * and reports the response head, its body as it arrives and its end, once. The framing is
 * owned here: a body cut short (content-length, chunked, a read error before EOF) is an
 * error, never an end (h1resp.h). Bounds: response head 64 KiB and 100 headers, a connect timeout
 * (pool wait, DNS, TCP, TLS) and a whole-transfer deadline. TLS: one client SSL_CTX for the
 * process (system CAs), peer and host name verified on every new connection. The control
 * plane keeps libcurl (upstream.h).
 */
#ifndef AOR_UPSTREAM_H1_H
#define AOR_UPSTREAM_H1_H

#include <stdint.h>
#include <h2o.h>

/* how a transfer failed: the `errstr` of its done callback (NULL when the response is complete); compare pointers */
extern const char aor_upstream_h1_err_connect[]; /* "connect failed": DNS, TCP or TLS (verification included) */
extern const char aor_upstream_h1_err_timeout[]; /* "timeout": the connect bound or the whole-transfer deadline */
extern const char aor_upstream_h1_err_io[];      /* "connection failed": broken, truncated, malformed or over-long response */
/* "local resource exhausted": the router's own trouble, not the backend's — socket()/connect() out of
 * descriptors, buffers or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM, EADDRNOTAVAIL), the resolver's own
 * failure (EAI_AGAIN, EAI_MEMORY, EAI_SYSTEM), or every allowed connection to the origin busy for the
 * whole connect timeout */
extern const char aor_upstream_h1_err_local[];

struct aor_upstream_h1;
struct aor_upstream_h1_xfer;
struct aor_upstream_h1_origin;
struct aor_upstream_h1_conn;

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
    const char *detail; /* words for the last error (static or in detail_buf; valid until the next start) */
    /* private */
    struct aor_upstream_h1_origin *origin;
    struct aor_upstream_h1_conn *conn; /* the connection carrying it; NULL while it waits for one */
    h2o_iovec_t reqbufs[2];
    h2o_timeout_t *connect_timeout;
    int is_head;
    int retried;                  /* already moved once to a fresh connection (a pooled one died before the request was written) */
    int paused;                   /* the body is not being read (backpressure) */
    int waiting;                  /* in origin->waiters */
    h2o_timeout_entry_t deadline; /* the whole transfer */
    h2o_timeout_entry_t wait;     /* the wait for a connection */
    h2o_linklist_t link;          /* in h1->active */
    h2o_linklist_t wait_link;     /* in origin->waiters */
    char detail_buf[160];
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
 * Sends `head` (the complete request head, CRLF CRLF included) and `body` to `t`'s origin on an
 * idle pooled connection, or on a new one when fewer than `max_conns` are open to the origin
 * (this worker), else after waiting (FIFO) for one to come free. Both buffers must stay
 * unchanged until the transfer ends or is cancelled. `is_head`: the method is HEAD (no body in
 * the response). The connect phase (pool wait, DNS, TCP, TLS handshake) is bounded by
 * connect_timeout_ms, the whole transfer by total_timeout_ms.
 * A request is never written twice to the backend: a pooled connection that dies after the
 * request was written, before any response byte, fails the transfer (aor_upstream_h1_err_io);
 * one that dies before the request was wholly written is replaced once by a fresh connection.
 * Returns 0 (then exactly one done callback follows, never before this returns, unless the
 * transfer is cancelled) or -1 (nothing started, no callback; x->detail says why; a local cause).
 */
int aor_upstream_h1_start(struct aor_upstream_h1 *h1, struct aor_upstream_h1_xfer *x, const struct aor_upstream_h1_target *t,
                          h2o_iovec_t head, h2o_iovec_t body, int is_head, uint64_t connect_timeout_ms, uint64_t total_timeout_ms,
                          unsigned max_conns);

/* stops an active transfer; no callback follows. Safe inside the transfer's own callbacks and
 * on an inactive transfer. Never opens a connection. Its connection is kept when that is free:
 * waiting → nothing was sent; response under way → read to its end in the background (at most
 * 64 KiB of body, 1 s) and pooled; request partly written → closed */
void aor_upstream_h1_cancel(struct aor_upstream_h1_xfer *x);

/* backpressure: stop / resume reading the response body from the socket (the peer's send
 * window then fills). Only after the head callback; no-ops when not applicable */
void aor_upstream_h1_pause(struct aor_upstream_h1_xfer *x);
void aor_upstream_h1_resume(struct aor_upstream_h1_xfer *x);

#endif
