/*
 * server — listeners, worker threads and their loops, and the process lifecycle:
 * SIGHUP reload (a new config generation handed to every worker), SIGTERM drain.
 * Each worker owns one uv loop carrying h2o, the upstreams (backends: upstream_h1;
 * control plane: libcurl) and its timers;
 * workers share nothing but the config generation (reference-counted) and the
 * backend state table (atomics).
 */
#ifndef AOR_SERVER_H
#define AOR_SERVER_H

#include <pthread.h>
#include <stdint.h>
#include <h2o.h>
#include "config.h"

struct aor_upstream;
struct aor_upstream_h1;
struct aor_accesslog;
struct aor_redis;
struct aor_redis_cmd;
struct aor_apikeys;
struct aor_tokencache;
struct aor_coolshare_read;
struct aor_cred_waitq;
struct aor_admit_worker;
struct aor_deftenant;

/*
 * One accepted client connection (item 2 connection cap, item 3 reset budget, item 22
 * teardown). Allocated by the accept callback with the uv handle h2o's socket wraps, freed by
 * that handle's close callback; every worker keeps a list of its own.
 */
struct aor_client_conn {
    uv_tcp_t tcp; /* h2o's socket wraps this handle */
    struct aor_worker *worker;
    h2o_socket_t *sock;
    h2o_linklist_t link;        /* worker->conns */
    int counted;                /* counts against limits.max_connections (not the metrics listener) */
    int metrics;                /* accepted on the `metrics:` listener opened at start (/status, /metrics) */
    int closing;                /* shut down by us: refuse whatever else arrives on it */
    unsigned resets;            /* requests that ended before their answer was sent */
    unsigned completed;         /* data-plane requests whose answer was sent */
    int h2;                     /* seen speaking HTTP/2 */
    h2o_linklist_t goaway_link; /* in worker->goaways: GOAWAY and shutdown at the next loop iteration */
    /* the header-block guard (server.c, hblock_*): h2o's read callback it wraps, and where its
     * scan of the HTTP/2 frames in sock->input stands */
    h2o_socket_cb h2o_read;
    h2o_socket_cb h1_read;      /* h2o's HTTP/1.1 read callback (mode 2): another one means an h2c upgrade */
    h2o_linklist_t settle_link; /* in worker->unsettled */
    size_t scan_off;            /* bytes at the start of sock->input already scanned */
    unsigned char mode; /* 0 undecided, 1 HTTP/2 (scanned), 2 anything else (not scanned), 3 HTTP/2 whose preface h2o may have read
                           (h2c upgrade, TLS ALPN h2) */
    unsigned char hp_state; /* HPACK scanner state inside the open header block */
    unsigned char hp_next;  /* the state after the integer or string being read */
    unsigned char in_block; /* a HEADERS frame without END_HEADERS was seen: CONTINUATION follows */
    uint64_t hp_skip;       /* string bytes still to skip, or the length being read */
    unsigned hp_shift;      /* bit position of the length being read */
    size_t block_fields;    /* header fields of the open block */
    size_t block_bytes;     /* wire bytes of the open block */
};

struct aor_worker {
    h2o_context_t ctx; /* handlers find their worker from req->conn->ctx */
    uv_loop_t loop;
    pthread_t thread;
    unsigned id;
    struct aor_upstream *upstream;       /* libcurl: control-plane calls (JWKS, OIDC, ...) */
    struct aor_upstream_h1 *upstream_h1; /* the data plane's backend connections (our HTTP/1.1 client) */
    struct aor_config *conf;             /* this worker's current generation; one reference held */
    struct aor_accesslog *accesslog;
    struct aor_redis *redis;           /* NULL when no redis: is configured */
    struct aor_apikeys *apikeys;       /* subscription key lookups, cached per worker */
    struct aor_tokencache *tokens;     /* verified JWTs, per worker */
    size_t auth_key_waiters;           /* requests waiting for an issuer's first keys (auth.c) */
    struct aor_cred_waitq *cred_waitq; /* requests waiting for a backend's first token (cred.h) */
    uv_timer_t coolshare_timer;        /* reads the cooldowns other replicas published */
    struct aor_redis_cmd *coolshare_cmd;
    struct aor_coolshare_read *coolshare_read; /* what the pending read is for (coolshare.c) */
    struct aor_admit_worker *admit;            /* the usage backlog's flush timer (admit.c) */
    struct aor_deftenant *deftenant;           /* the `default` tenant's quota hash, polled (deftenant.c) */
    uint64_t rng;
    uv_async_t wake; /* main thread → worker: reload or shutdown */
    uint64_t seen_generation;
    size_t inflight;
    int shutting_down;
    uv_tcp_t *listeners;
    size_t num_listeners;
    h2o_accept_ctx_t *accept_ctxs; /* one per listener (TLS context differs) */
    uv_timer_t drain_timer;
    h2o_linklist_t conns;     /* struct aor_client_conn, this worker's client connections */
    unsigned char *paused;    /* per listener: at max_connections, accept() is held back */
    uv_timer_t accept_timer;  /* while any listener is paused: retries it */
    uv_check_t defer_check;   /* starts the deferred data-plane requests after the poll phase (pipeline.c) */
    uv_idle_t defer_idle;     /* ... and keeps the poll from blocking while some wait */
    h2o_linklist_t deferred;  /* struct aor_request waiting for defer_check */
    uv_check_t settle_check;  /* re-arms the header-block guard of TLS connections whose handshake ended (server.c) */
    h2o_linklist_t unsettled; /* struct aor_client_conn: TLS, no application data scanned yet */
    int tearing_down;         /* the loop has stopped: requests get a bare 503 */
    uv_timer_t goaway_timer;  /* closes the connections queued in `goaways` */
    h2o_linklist_t goaways;
};

/* connections the metrics listener holds at once (scrapers, status pages); more wait in the accept
 * queue, apart from limits.max_connections */
#define AOR_METRICS_MAX_CONNECTIONS 64

/* descriptors RLIMIT_NOFILE must leave beyond the client connections: upstream, Redis, log files */
#define AOR_FD_MARGIN 256

/* ceiling on the requests a client connection may abandon (reset, cancel, disconnect before the
 * answer) beyond the ones it completed; past it the connection is shut down (Rapid Reset) */
#define AOR_CONN_RESET_BUDGET 100

/* the connection record of an h2o connection; NULL when unknown (a layout h2o did not keep) */
struct aor_client_conn *aor_server_conn_of(h2o_conn_t *conn);

/* re-wraps h2o's read callback with the HTTP/2 header-block guard when h2o replaced it outside a
 * read (server.c); call it from request handlers. NULL is fine */
void aor_server_conn_guard(struct aor_client_conn *c);
/**
 * Counts one abandoned request (`reset` 1) or one completed answer (`reset` 0) against `c`
 * (`h2`: the request came over HTTP/2); when the resets exceed AOR_CONN_RESET_BUDGET +
 * completed, `closing` is set and the connection is closed: a plaintext HTTP/2 one gets a
 * GOAWAY(ENHANCE_YOUR_CALM) first, at the start of the next loop iteration (outside h2o's
 * frame processing, when nothing of h2o's is queued on the socket); then the socket is shut
 * down both ways (shutdown(2)), h2o sees EOF and closes the connection and its streams
 * itself. h2o 2.2.5 exposes no per-connection GOAWAY. NULL is a no-op.
 */
void aor_server_conn_account(struct aor_client_conn *c, int reset, int h2);

/* process-wide: request-body bytes the handlers hold (limits.max_inflight_body_bytes) */
extern uint64_t aor_inflight_body_bytes;

/* runs the server until SIGTERM/SIGINT and the drain; takes over the reference to `conf`. Returns the exit code */
int aor_server_run(struct aor_config *conf);

/* a fresh random 32-bit number from the worker's generator (not for secrets) */
uint32_t aor_worker_random(struct aor_worker *w);

/* called by the pipeline when a request object is freed; lets a draining worker stop */
void aor_worker_request_done(struct aor_worker *w);

/* the port the `metrics:` listener was opened on at start (a reload does not move it), 0 when none */
uint16_t aor_server_metrics_port(void);

/* wall clock in unix milliseconds */
int64_t aor_now_ms(void);

/* monotonic clock in nanoseconds, for durations */
uint64_t aor_mono_ns(void);

#endif
