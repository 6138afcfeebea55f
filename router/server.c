/*
 * server.c — see server.h.
 *
 * Threads: the main thread owns signals (sigwait) and config generations; each
 * worker runs one uv loop with its own h2o context, listening sockets
 * (SO_REUSEPORT: the kernel spreads connections), upstream and access log.
 * Reload: main loads and validates the new file, publishes it under `gen_lock`
 * and wakes every worker, which swaps its reference on its own loop.
 * Drain: workers close their listeners, ask h2o to shut connections down
 * gracefully, and stop their loop when no request is in flight or
 * limits.drain_timeout_ms has passed.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <openssl/evp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <curl/curl.h>
#include "accesslog.h"
#include "apikey.h"
#include "backend.h"
#include "admit.h"
#include "coolshare.h"
#include "jwks.h"
#include "redis.h"
#include "tokencache.h"
#include "log.h"
#include "metrics.h"
#include "pipeline.h"
#include "server.h"
#include "upstream.h"
#include "upstream_h1.h"

#define REDIS_COMMAND_TIMEOUT_MS 1000 /* hiredis 0.14 has none: our own timer per command */

static h2o_globalconf_t globalconf;
static SSL_CTX **ssl_ctxs; /* one per listener, NULL for plain ones */
static struct aor_worker *workers;
static size_t num_workers;
/* the configured listeners, plus the metrics listener when `metrics:` names one */
static struct aor_listen_conf *listens;
static size_t num_listens;

static pthread_mutex_t gen_lock = PTHREAD_MUTEX_INITIALIZER;
static struct aor_config *current_conf; /* the published generation; one reference held */
static uint64_t generation = 1;
static volatile int shutdown_requested;

int64_t aor_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t aor_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint32_t aor_worker_random(struct aor_worker *w)
{
    /* xorshift64*: request ids and balancer draws need spread, not secrecy */
    w->rng ^= w->rng >> 12;
    w->rng ^= w->rng << 25;
    w->rng ^= w->rng >> 27;
    return (uint32_t)((w->rng * 2685821657736338717ull) >> 32);
}

void aor_worker_request_done(struct aor_worker *w)
{
    --w->inflight;
    if (w->shutting_down && w->inflight == 0)
        uv_stop(&w->loop);
}

/* ---- listeners --------------------------------------------------------------------- */

static int open_listener(const struct aor_listen_conf *lc, FILE *errs)
{
    struct sockaddr_storage ss;
    socklen_t sslen;
    int fd, on = 1;

    memset(&ss, 0, sizeof(ss));
    if (inet_pton(AF_INET, lc->address, &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
        ((struct sockaddr_in *)&ss)->sin_family = AF_INET;
        ((struct sockaddr_in *)&ss)->sin_port = htons(lc->port);
        sslen = sizeof(struct sockaddr_in);
    } else if (inet_pton(AF_INET6, lc->address, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
        ((struct sockaddr_in6 *)&ss)->sin6_family = AF_INET6;
        ((struct sockaddr_in6 *)&ss)->sin6_port = htons(lc->port);
        sslen = sizeof(struct sockaddr_in6);
    } else {
        AOR_LOG(AOR_LOG_ERROR, "server", "listen address %s is not an IP address", lc->address);
        return -1;
    }
    if ((fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
    if (bind(fd, (struct sockaddr *)&ss, sslen) != 0 || listen(fd, 1024) != 0) {
        AOR_LOG(AOR_LOG_ERROR, "server", "cannot listen on %s:%u: %s", lc->address, lc->port, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static SSL_CTX *make_ssl_ctx(const struct aor_listen_conf *lc)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

    if (ctx == NULL)
        return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    if (SSL_CTX_use_certificate_chain_file(ctx, lc->tls.cert_file) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, lc->tls.key_file, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        AOR_LOG(AOR_LOG_ERROR, "server", "listener %s:%u: cannot load certificate %s / key %s", lc->address, lc->port,
                lc->tls.cert_file, lc->tls.key_file);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (lc->tls.client_ca_file != NULL) {
        int mode = SSL_VERIFY_PEER;
        if (SSL_CTX_load_verify_locations(ctx, lc->tls.client_ca_file, NULL) != 1) {
            AOR_LOG(AOR_LOG_ERROR, "server", "listener %s:%u: cannot load client CA %s", lc->address, lc->port,
                    lc->tls.client_ca_file);
            SSL_CTX_free(ctx);
            return NULL;
        }
        if (lc->tls.client_cert == AOR_CLIENT_CERT_REQUIRED)
            mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
        SSL_CTX_set_verify(ctx, mode, NULL);
        /* with peer verification on, OpenSSL refuses to resume a session whose context is unset
         * (every reconnect of a client that caches sessions failed). One context per listener, so
         * a session verified against one listener's CA never resumes on another's */
        {
            unsigned char sid[SSL_MAX_SID_CTX_LENGTH];
            unsigned int sid_len = 0;
            char name[512];
            int n = snprintf(name, sizeof(name), "aoai-router %s:%u %s", lc->address, (unsigned)lc->port, lc->tls.client_ca_file);
            if (n < 0 || EVP_Digest(name, strlen(name), sid, &sid_len, EVP_sha256(), NULL) != 1 ||
                SSL_CTX_set_session_id_context(ctx, sid, sid_len > sizeof(sid) ? (unsigned)sizeof(sid) : sid_len) != 1) {
                AOR_LOG(AOR_LOG_ERROR, "server", "listener %s:%u: cannot set the TLS session id context", lc->address, lc->port);
                SSL_CTX_free(ctx);
                return NULL;
            }
        }
    }
    h2o_ssl_register_alpn_protocols(ctx, h2o_http2_alpn_protocols);
    return ctx;
}

static void on_accept(uv_stream_t *listener, int status)
{
    h2o_accept_ctx_t *actx = listener->data;
    uv_tcp_t *conn;
    h2o_socket_t *sock;

    if (status != 0)
        return;
    conn = h2o_mem_alloc(sizeof(*conn));
    uv_tcp_init(listener->loop, conn);
    if (uv_accept(listener, (uv_stream_t *)conn) != 0) {
        uv_close((uv_handle_t *)conn, (uv_close_cb)free);
        return;
    }
    uv_tcp_nodelay(conn, 1);
    sock = h2o_uv_socket_create((uv_stream_t *)conn, (uv_close_cb)free);
    h2o_accept(actx, sock);
}

/* ---- workers ----------------------------------------------------------------------- */

static void on_drain_timeout(uv_timer_t *t)
{
    struct aor_worker *w = t->data;

    AOR_LOG(AOR_LOG_WARN, "server", "worker %u: drain timeout with %zu requests in flight; stopping", w->id, w->inflight);
    uv_stop(&w->loop);
}

static void begin_shutdown(struct aor_worker *w)
{
    size_t i;

    w->shutting_down = 1;
    for (i = 0; i != w->num_listeners; ++i)
        uv_close((uv_handle_t *)&w->listeners[i], NULL);
    h2o_context_request_shutdown(&w->ctx);
    if (w->inflight == 0) {
        uv_stop(&w->loop);
        return;
    }
    uv_timer_init(&w->loop, &w->drain_timer);
    w->drain_timer.data = w;
    uv_timer_start(&w->drain_timer, on_drain_timeout, w->conf->limits.drain_timeout_ms, 0);
}

static void on_wake(uv_async_t *async)
{
    struct aor_worker *w = async->data;

    pthread_mutex_lock(&gen_lock);
    if (w->seen_generation != generation) {
        struct aor_config *old = w->conf;
        w->conf = current_conf;
        aor_config_retain(w->conf);
        w->seen_generation = generation;
        aor_config_release(old); /* requests in flight still hold it */
    }
    pthread_mutex_unlock(&gen_lock);
    if (shutdown_requested && !w->shutting_down)
        begin_shutdown(w);
}

static void *worker_main(void *arg)
{
    struct aor_worker *w = arg;

    uv_run(&w->loop, UV_RUN_DEFAULT);

    /* tear down what is ours; h2o's connections that are still open (idle keep-alive
     * clients) are left to the process exit, as h2o 2.2 has no way to dispose them */
    aor_accesslog_destroy(w->accesslog);
    if (w->id == 0)
        aor_keystores_stop();
    aor_apikeys_destroy(w->apikeys);
    aor_coolshare_stop(w);
    aor_admit_worker_stop(w);
    aor_redis_destroy(w->redis);
    aor_tokencache_destroy(w->tokens);
    uv_run(&w->loop, UV_RUN_NOWAIT);
    aor_upstream_destroy(w->upstream);
    aor_upstream_h1_close(w->upstream_h1);
    uv_close((uv_handle_t *)&w->wake, NULL);
    if (w->drain_timer.loop != NULL) /* initialised by begin_shutdown */
        uv_close((uv_handle_t *)&w->drain_timer, NULL);
    uv_run(&w->loop, UV_RUN_NOWAIT); /* runs the close callbacks */
    aor_upstream_h1_free(w->upstream_h1);
    w->upstream_h1 = NULL;
    aor_config_release(w->conf);
    w->conf = NULL;
    free(w->listeners);
    free(w->accept_ctxs);
    return NULL;
}

static int start_worker(struct aor_worker *w, unsigned id, const int *fds)
{
    const struct aor_config *conf = w->conf;
    size_t i;

    w->id = id;
    if (getrandom(&w->rng, sizeof(w->rng), 0) != sizeof(w->rng) || w->rng == 0)
        w->rng = 0x9e3779b97f4a7c15ull ^ ((uint64_t)id << 32) ^ (uint64_t)time(NULL);
    uv_loop_init(&w->loop);
    h2o_context_init(&w->ctx, &w->loop, &globalconf);
    if ((w->upstream = aor_upstream_create(&w->loop)) == NULL ||
        (w->upstream_h1 = aor_upstream_h1_create(&w->loop, &w->ctx.receivers.hostinfo_getaddr)) == NULL ||
        (w->accesslog = aor_accesslog_create(&w->loop)) == NULL ||
        (w->tokens = aor_tokencache_create(AOR_TOKENCACHE_DEFAULT_CAPACITY)) == NULL)
        return -1;
    if (conf->redis.url != NULL &&
        (w->redis = aor_redis_create(&w->loop, conf->redis.url, conf->redis.password, REDIS_COMMAND_TIMEOUT_MS)) == NULL)
        return -1;
    if ((w->apikeys = aor_apikeys_create(w->redis, AOR_APIKEY_CACHE_DEFAULT)) == NULL || aor_coolshare_start(w) != 0 ||
        aor_admit_worker_start(w) != 0)
        return -1;
    /* worker 0's loop also fetches the issuers' keys (OIDC discovery, JWKS) */
    if (id == 0 && aor_keystores_start(&w->loop, w->upstream) != 0)
        return -1;
    uv_async_init(&w->loop, &w->wake, on_wake);
    w->wake.data = w;
    w->num_listeners = num_listens;
    w->listeners = calloc(w->num_listeners, sizeof(*w->listeners));
    w->accept_ctxs = calloc(w->num_listeners, sizeof(*w->accept_ctxs));
    if (w->listeners == NULL || w->accept_ctxs == NULL)
        return -1;
    for (i = 0; i != w->num_listeners; ++i) {
        w->accept_ctxs[i].ctx = &w->ctx;
        w->accept_ctxs[i].hosts = globalconf.hosts;
        w->accept_ctxs[i].ssl_ctx = ssl_ctxs[i];
        uv_tcp_init(&w->loop, &w->listeners[i]);
        w->listeners[i].data = &w->accept_ctxs[i];
        if (uv_tcp_open(&w->listeners[i], fds[i]) != 0 || uv_listen((uv_stream_t *)&w->listeners[i], 1024, on_accept) != 0)
            return -1;
    }
    return pthread_create(&w->thread, NULL, worker_main, w) == 0 ? 0 : -1;
}

/* ---- lifecycle --------------------------------------------------------------------- */

/* gives a config its runtime parts: backend state and the issuers' keystores. 0 or -1 */
static int attach_runtime(struct aor_config *conf)
{
    static uint64_t generations;

    conf->generation = ++generations;
    if (aor_backend_attach(conf, aor_now_ms()) != 0)
        return -1;
    if (conf->auth.num_jwt != 0) {
        if ((conf->keystores = calloc(conf->auth.num_jwt, sizeof(*conf->keystores))) == NULL ||
            aor_keystores_attach(conf, conf->keystores) != 0)
            return -1;
    }
    return 0;
}

static void wake_workers(void)
{
    size_t i;
    for (i = 0; i != num_workers; ++i)
        uv_async_send(&workers[i].wake);
}

static void reload(const char *path)
{
    struct aor_config *next, *old;

    AOR_LOG(AOR_LOG_INFO, "server", "SIGHUP: reloading %s", path);
    if ((next = aor_config_load(path, stderr)) == NULL) {
        AOR_LOG(AOR_LOG_ERROR, "server", "reload refused: %s has errors; the running config is kept", path);
        return;
    }
    if (attach_runtime(next) != 0) {
        AOR_LOG(AOR_LOG_ERROR, "server", "reload refused: out of memory");
        aor_config_release(next);
        return;
    }
    if (next->num_listeners != current_conf->num_listeners || next->threads != current_conf->threads ||
        next->limits.max_body_bytes > current_conf->limits.max_body_bytes)
        AOR_LOG(AOR_LOG_WARN, "server", "listen, threads and a larger max_body_bytes take effect only after a restart");
    pthread_mutex_lock(&gen_lock);
    old = current_conf;
    current_conf = next;
    ++generation;
    pthread_mutex_unlock(&gen_lock);
    aor_config_release(old);
    wake_workers();
    AOR_LOG(AOR_LOG_INFO, "server", "reloaded %s: %zu backends", path, next->num_backends);
}

int aor_server_run(struct aor_config *conf)
{
    h2o_hostconf_t *hostconf;
    h2o_pathconf_t *pathconf;
    h2o_handler_t *handler;
    sigset_t sigs;
    int *fds = NULL, ret = 1, sig;
    size_t i, started = 0, num_ssl = 0;
    char *path = strdup(conf->path);

    if (path == NULL || attach_runtime(conf) != 0)
        goto exit;
    current_conf = conf;
    curl_global_init(CURL_GLOBAL_DEFAULT);

    h2o_config_init(&globalconf);
    globalconf.server_name = h2o_iovec_init(H2O_STRLIT("aoai-router"));
    /* h2o answers bodies above its own limit with a plain-text 413; ours (JSON) covers up to here */
    globalconf.max_request_entity_size = conf->limits.max_body_bytes + 1024 * 1024;
    hostconf = h2o_config_register_host(&globalconf, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    pathconf = h2o_config_register_path(hostconf, "/", 0);
    handler = h2o_create_handler(pathconf, sizeof(*handler));
    handler->on_req = aor_pipeline_on_req;

    /* signals go to the main thread only: block them before any worker exists */
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGHUP);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);

    num_listens = conf->num_listeners + (conf->metrics.enabled ? 1 : 0);
    num_ssl = num_listens;
    if ((listens = calloc(num_listens, sizeof(*listens))) == NULL)
        goto exit;
    memcpy(listens, conf->listeners, sizeof(*listens) * conf->num_listeners);
    if (conf->metrics.enabled) {
        listens[conf->num_listeners].address = conf->metrics.address;
        listens[conf->num_listeners].port = conf->metrics.port;
    }
    ssl_ctxs = calloc(num_listens, sizeof(*ssl_ctxs));
    num_workers = conf->threads != 0 ? conf->threads : 1;
    workers = calloc(num_workers, sizeof(*workers));
    fds = malloc(sizeof(*fds) * num_listens * num_workers);
    if (ssl_ctxs == NULL || workers == NULL || fds == NULL)
        goto exit;
    for (i = 0; i != num_listens; ++i)
        if (listens[i].tls.enabled && (ssl_ctxs[i] = make_ssl_ctx(&listens[i])) == NULL)
            goto exit;
    for (i = 0; i != num_listens * num_workers; ++i)
        if ((fds[i] = open_listener(&listens[i % num_listens], stderr)) < 0)
            goto exit;
    for (started = 0; started != num_workers; ++started) {
        workers[started].conf = conf;
        aor_config_retain(conf);
        workers[started].seen_generation = generation;
        if (start_worker(&workers[started], (unsigned)started, fds + started * num_listens) != 0) {
            AOR_LOG(AOR_LOG_ERROR, "server", "cannot start worker %zu", started);
            goto exit;
        }
    }
    for (i = 0; i != num_listens; ++i)
        AOR_LOG(AOR_LOG_INFO, "server", "listening on %s:%u (%s)", listens[i].address, listens[i].port,
                i >= conf->num_listeners ? "metrics"
                : listens[i].tls.enabled ? "https, h2 via ALPN"
                                         : "http/1.1 + h2c");
    AOR_LOG(AOR_LOG_INFO, "server", "aoai-router %s: %zu workers, %zu backends", AOR_VERSION, num_workers, conf->num_backends);

    for (;;) {
        if (sigwait(&sigs, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            reload(path);
            continue;
        }
        AOR_LOG(AOR_LOG_INFO, "server", "%s: draining", sig == SIGTERM ? "SIGTERM" : "SIGINT");
        break;
    }
    shutdown_requested = 1;
    wake_workers();
    ret = 0;

exit:
    if (ret != 0) {
        shutdown_requested = 1;
        for (i = 0; i != started; ++i)
            uv_async_send(&workers[i].wake);
    }
    for (i = 0; i != started; ++i)
        pthread_join(workers[i].thread, NULL);
    if (started != 0)
        AOR_LOG(AOR_LOG_INFO, "server", "stopped");
    for (i = 0; ssl_ctxs != NULL && i != num_ssl; ++i)
        if (ssl_ctxs[i] != NULL)
            SSL_CTX_free(ssl_ctxs[i]);
    free(ssl_ctxs);
    free(listens);
    /* `workers` stays: its loops and h2o contexts may still own idle connections */
    aor_config_release(current_conf);
    aor_backend_table_free();
    aor_keystores_free();
    aor_metrics_free();
    curl_global_cleanup();
    free(fds);
    free(path);
    return ret;
}
