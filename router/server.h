/*
 * server — listeners, worker threads and their loops, and the process lifecycle:
 * SIGHUP reload (a new config generation handed to every worker), SIGTERM drain.
 * Each worker owns one uv loop carrying h2o, the upstreams (backends: h2o's http1client;
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
struct aor_admit_worker;

struct aor_worker {
    h2o_context_t ctx; /* handlers find their worker from req->conn->ctx */
    uv_loop_t loop;
    pthread_t thread;
    unsigned id;
    struct aor_upstream *upstream;       /* libcurl: control-plane calls (JWKS, OIDC, ...) */
    struct aor_upstream_h1 *upstream_h1; /* h2o http1client: the data plane's backend connections */
    struct aor_config *conf;             /* this worker's current generation; one reference held */
    struct aor_accesslog *accesslog;
    struct aor_redis *redis;       /* NULL when no redis: is configured */
    struct aor_apikeys *apikeys;   /* subscription key lookups, cached per worker */
    struct aor_tokencache *tokens; /* verified JWTs, per worker */
    size_t auth_key_waiters;       /* requests waiting for an issuer's first keys (auth.c) */
    uv_timer_t coolshare_timer;    /* reads the cooldowns other replicas published */
    struct aor_redis_cmd *coolshare_cmd;
    struct aor_coolshare_read *coolshare_read; /* what the pending read is for (coolshare.c) */
    struct aor_admit_worker *admit;            /* the usage backlog's flush timer (admit.c) */
    uint64_t rng;
    uv_async_t wake; /* main thread → worker: reload or shutdown */
    uint64_t seen_generation;
    size_t inflight;
    int shutting_down;
    uv_tcp_t *listeners;
    size_t num_listeners;
    h2o_accept_ctx_t *accept_ctxs; /* one per listener (TLS context differs) */
    uv_timer_t drain_timer;
};

/* runs the server until SIGTERM/SIGINT and the drain; takes over the reference to `conf`. Returns the exit code */
int aor_server_run(struct aor_config *conf);

/* a fresh random 32-bit number from the worker's generator (not for secrets) */
uint32_t aor_worker_random(struct aor_worker *w);

/* called by the pipeline when a request object is freed; lets a draining worker stop */
void aor_worker_request_done(struct aor_worker *w);

/* wall clock in unix milliseconds */
int64_t aor_now_ms(void);

/* monotonic clock in nanoseconds, for durations */
uint64_t aor_mono_ns(void);

#endif
