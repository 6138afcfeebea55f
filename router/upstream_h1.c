/*
 * upstream_h1.c — see upstream_h1.h.
 *
 * What this relies on in h2o 2.2.5's http1client (lib/common/http1client.c):
 *  - ctx->io_timeout bounds every phase (connect, send, head, each body read) and is read
 *    from client->ctx each time the client links its timer. We connect with a context
 *    whose io_timeout is the connect bound and, once connected, point the client at a
 *    second context whose io_timeout is the whole-transfer bound. The deadline proper is
 *    our own entry on that same timeout list.
 *  - connect_with_pool hands over a pooled socket synchronously, a new one later: that is
 *    how a reused connection is told apart. A reused connection the peer closed just as we
 *    took it fails before any response byte; it is retried on another connection, as curl
 *    does, instead of failing the attempt.
 *  - returning NULL from the head callback or non-zero from the body callback makes the
 *    client close the connection and free itself once the callback returns. A cancel from
 *    inside one of our callbacks therefore only sets a flag on the trampoline's stack.
 *  - the socket goes back to the pool after the body callback that reports the end, when
 *    the response allowed keep-alive; after an error or a cancel it is closed.
 *  - there is no pause API; the body reader is static, so it is taken from sock->_cb.read.
 *  - h2o's own post-handshake name check is skipped on TLS 1.3 (bench/clientcmp/results/
 *    tls.txt): the name is checked by OpenSSL during chain verification instead, from the
 *    SNI h2o sets on every client connection (pool->peer.host, the URL's host).
 */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include "log.h"
#include "upstream_h1.h"

#define MAX_TIMINGS 8       /* distinct (connect, total) timeout pairs in use at once */
#define POOL_IDLE_MS 30000  /* an idle pooled connection is closed after this */
#define MAX_STALE_RETRIES 2 /* tries on another connection after pooled ones turned out closed */

/* the timeouts a transfer runs under; all entries of an h2o_timeout_t share its duration */
struct aor_upstream_h1_timing {
    h2o_timeout_t connect_timeout, total_timeout;
    h2o_http1client_ctx_t connect_ctx, xfer_ctx;
};

struct aor_upstream_h1_origin {
    h2o_socketpool_t pool;
    int is_ssl;
    uint16_t port;
};

struct aor_upstream_h1 {
    uv_loop_t *loop;
    h2o_multithread_receiver_t *getaddr;
    SSL_CTX *tls;
    struct aor_upstream_h1_timing timings[MAX_TIMINGS];
    size_t num_timings;
    struct aor_upstream_h1_origin *origins[AOR_UPSTREAM_H1_MAX_ORIGINS];
    size_t num_origins;
    struct aor_upstream_h1_target *targets[AOR_UPSTREAM_H1_MAX_ORIGINS];
    size_t num_targets;
    h2o_linklist_t active; /* transfers between start and done/cancel */
};

/* ---- TLS: one client context for the process ------------------------------------------ */

static pthread_mutex_t tls_lock = PTHREAD_MUTEX_INITIALIZER;
static SSL_CTX *tls_ctx; /* guarded by tls_lock; shared read-only by every worker once made */
static unsigned tls_users;

/* OpenSSL's chain verification, with the connection's host name (its SNI) checked as part of it */
static int verify_chain_and_name(X509_STORE_CTX *store, void *arg)
{
    SSL *ssl = X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx());
    const char *name = ssl != NULL ? SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name) : NULL;
    X509_VERIFY_PARAM *param = X509_STORE_CTX_get0_param(store);
    struct in6_addr ip;

    if (name == NULL || param == NULL) {
        X509_STORE_CTX_set_error(store, X509_V_ERR_HOSTNAME_MISMATCH);
        return 0;
    }
    if (inet_pton(AF_INET, name, &ip) == 1 || inet_pton(AF_INET6, name, &ip) == 1) {
        if (X509_VERIFY_PARAM_set1_ip_asc(param, name) != 1)
            return 0;
    } else {
        X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if (X509_VERIFY_PARAM_set1_host(param, name, 0) != 1)
            return 0;
    }
    return X509_verify_cert(store);
}

static SSL_CTX *make_tls_ctx(void)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

    if (ctx == NULL)
        return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    /* the system CA bundle (SSL_CERT_FILE / SSL_CERT_DIR override it, as for curl) */
    if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_cert_verify_callback(ctx, verify_chain_and_name, NULL);
    return ctx;
}

static SSL_CTX *tls_acquire(void)
{
    SSL_CTX *ctx;

    pthread_mutex_lock(&tls_lock);
    if (tls_ctx == NULL)
        tls_ctx = make_tls_ctx();
    if ((ctx = tls_ctx) != NULL)
        ++tls_users;
    pthread_mutex_unlock(&tls_lock);
    return ctx;
}

static void tls_release(void)
{
    pthread_mutex_lock(&tls_lock);
    if (--tls_users == 0) {
        SSL_CTX_free(tls_ctx);
        tls_ctx = NULL;
    }
    pthread_mutex_unlock(&tls_lock);
}

/* ---- worker objects ------------------------------------------------------------------- */

struct aor_upstream_h1 *aor_upstream_h1_create(uv_loop_t *loop, h2o_multithread_receiver_t *getaddr)
{
    struct aor_upstream_h1 *h1 = calloc(1, sizeof(*h1));

    if (h1 == NULL)
        return NULL;
    if ((h1->tls = tls_acquire()) == NULL) {
        AOR_LOG(AOR_LOG_ERROR, "upstream", "cannot set up the TLS client context (system CA bundle)");
        free(h1);
        return NULL;
    }
    h1->loop = loop;
    h1->getaddr = getaddr;
    h2o_linklist_init_anchor(&h1->active);
    return h1;
}

/* unlinks a transfer that ends (by any path) from everything of ours */
static void detach(struct aor_upstream_h1_xfer *x)
{
    if (h2o_timeout_is_linked(&x->deadline))
        h2o_timeout_unlink(&x->deadline);
    if (h2o_linklist_is_linked(&x->link))
        h2o_linklist_unlink(&x->link);
    x->active = 0;
    x->client = NULL;
    x->cancelled = NULL;
    x->paused = 0;
}

void aor_upstream_h1_close(struct aor_upstream_h1 *h1)
{
    size_t i;

    if (h1 == NULL)
        return;
    while (!h2o_linklist_is_empty(&h1->active)) {
        struct aor_upstream_h1_xfer *x = H2O_STRUCT_FROM_MEMBER(struct aor_upstream_h1_xfer, link, h1->active.next);
        if (x->client != NULL)
            h2o_http1client_cancel(x->client);
        detach(x);
    }
    for (i = 0; i != h1->num_origins; ++i)
        h2o_socketpool_dispose(&h1->origins[i]->pool); /* closes pooled sockets; its timer handle closes on the loop */
    for (i = 0; i != h1->num_timings; ++i) {
        h2o_timeout_dispose(h1->loop, &h1->timings[i].connect_timeout);
        h2o_timeout_dispose(h1->loop, &h1->timings[i].total_timeout);
    }
}

void aor_upstream_h1_free(struct aor_upstream_h1 *h1)
{
    size_t i;

    if (h1 == NULL)
        return;
    for (i = 0; i != h1->num_origins; ++i)
        free(h1->origins[i]);
    for (i = 0; i != h1->num_targets; ++i)
        free(h1->targets[i]);
    tls_release();
    free(h1);
}

static struct aor_upstream_h1_timing *timing_for(struct aor_upstream_h1 *h1, uint64_t connect_ms, uint64_t total_ms)
{
    struct aor_upstream_h1_timing *t;
    size_t i;

    for (i = 0; i != h1->num_timings; ++i) {
        t = h1->timings + i;
        if (t->connect_timeout.timeout == connect_ms && t->total_timeout.timeout == total_ms)
            return t;
    }
    if (h1->num_timings != MAX_TIMINGS) {
        t = h1->timings + h1->num_timings++;
        h2o_timeout_init(h1->loop, &t->connect_timeout, connect_ms);
        h2o_timeout_init(h1->loop, &t->total_timeout, total_ms);
        t->connect_ctx = (h2o_http1client_ctx_t){h1->loop, h1->getaddr, &t->connect_timeout, NULL, h1->tls};
        t->xfer_ctx = (h2o_http1client_ctx_t){h1->loop, h1->getaddr, &t->total_timeout, NULL, h1->tls};
        return t;
    }
    /* reloads changed the timeouts more often than that: take over a pair nothing waits on */
    for (i = 0; i != h1->num_timings; ++i) {
        t = h1->timings + i;
        if (h2o_linklist_is_empty(&t->connect_timeout._entries) && h2o_linklist_is_empty(&t->total_timeout._entries)) {
            t->connect_timeout.timeout = connect_ms;
            t->total_timeout.timeout = total_ms;
            return t;
        }
    }
    return NULL;
}

static struct aor_upstream_h1_origin *origin_for(struct aor_upstream_h1 *h1, int is_ssl, h2o_iovec_t host, uint16_t port)
{
    struct aor_upstream_h1_origin *o;
    size_t i;

    for (i = 0; i != h1->num_origins; ++i) {
        o = h1->origins[i];
        if (o->is_ssl == is_ssl && o->port == port && h2o_memis(o->pool.peer.host.base, o->pool.peer.host.len, host.base, host.len))
            return o;
    }
    if (h1->num_origins == AOR_UPSTREAM_H1_MAX_ORIGINS || (o = calloc(1, sizeof(*o))) == NULL)
        return NULL;
    o->is_ssl = is_ssl;
    o->port = port;
    /* capacity: 2.2.5 does not enforce it; a name is resolved (h2o's resolver thread) per new connection */
    h2o_socketpool_init_by_hostport(&o->pool, host, port, is_ssl, SIZE_MAX);
    h2o_socketpool_set_timeout(&o->pool, h1->loop, POOL_IDLE_MS);
    h1->origins[h1->num_origins++] = o;
    return o;
}

const struct aor_upstream_h1_target *aor_upstream_h1_target(struct aor_upstream_h1 *h1, const char *url, size_t url_len)
{
    struct aor_upstream_h1_target *t;
    h2o_url_t parsed;
    size_t i, path_at;
    int is_ssl;

    for (i = 0; i != h1->num_targets; ++i) {
        t = h1->targets[i];
        if (t->url_len == url_len && memcmp(t->url, url, url_len) == 0)
            return t;
    }
    if (h1->num_targets == AOR_UPSTREAM_H1_MAX_ORIGINS) {
        AOR_LOG(AOR_LOG_ERROR, "upstream", "more than %d backend URLs since start; restart to use new ones",
                AOR_UPSTREAM_H1_MAX_ORIGINS);
        return NULL;
    }
    if ((t = malloc(sizeof(*t) + url_len + 1)) == NULL)
        return NULL;
    t->url = (char *)(t + 1);
    memcpy(t->url, url, url_len);
    t->url[url_len] = '\0';
    t->url_len = url_len;
    if (h2o_url_parse(t->url, url_len, &parsed) != 0 ||
        (parsed.scheme != &H2O_URL_SCHEME_HTTP && parsed.scheme != &H2O_URL_SCHEME_HTTPS) || parsed.host.len == 0) {
        AOR_LOG(AOR_LOG_ERROR, "upstream", "backend URL %s is not http[s]://host[:port][/path]", t->url);
        free(t);
        return NULL;
    }
    is_ssl = parsed.scheme == &H2O_URL_SCHEME_HTTPS;
    if ((t->origin = origin_for(h1, is_ssl, parsed.host, h2o_url_get_port(&parsed))) == NULL) {
        AOR_LOG(AOR_LOG_ERROR, "upstream", "cannot add a connection pool for %s", t->url);
        free(t);
        return NULL;
    }
    t->authority = parsed.authority;
    /* what follows the authority, verbatim (h2o_url_parse would make an absent path "/") */
    path_at = (size_t)(parsed.authority.base + parsed.authority.len - t->url);
    t->path_prefix = h2o_iovec_init(t->url + path_at, url_len - path_at);
    h1->targets[h1->num_targets++] = t;
    return t;
}

/* ---- one transfer --------------------------------------------------------------------- */

const char aor_upstream_h1_err_connect[] = "connect failed";
const char aor_upstream_h1_err_timeout[] = "timeout";
const char aor_upstream_h1_err_io[] = "connection failed";

static int is_timeout(const char *errstr)
{
    /* h2o's words for its io_timeout firing in the connect phase and afterwards */
    return strcmp(errstr, "connection timeout") == 0 || strcmp(errstr, "I/O timeout") == 0;
}

/* the transfer is over: tell the owner, and touch nothing afterwards (it may be restarted or freed) */
static void finish(struct aor_upstream_h1_xfer *x, const char *errstr)
{
    detach(x);
    x->on_done(x, errstr);
}

static int on_body(h2o_http1client_t *client, const char *errstr)
{
    struct aor_upstream_h1_xfer *x = client->data;
    h2o_buffer_t **input = &client->sock->input;
    int cancelled = 0;

    if (errstr != NULL && errstr != h2o_http1client_error_is_eos) {
        x->detail = errstr;
        finish(x, is_timeout(errstr) ? aor_upstream_h1_err_timeout : aor_upstream_h1_err_io);
        return -1;
    }
    if ((*input)->size != 0) {
        x->cancelled = &cancelled;
        x->on_body(x, (*input)->bytes, (*input)->size);
        if (cancelled)
            return -1;
        x->cancelled = NULL;
        h2o_buffer_consume(input, (*input)->size);
    }
    if (errstr == NULL)
        return 0;
    /* complete: http1client pools the connection (if it may) after we return */
    finish(x, NULL);
    return 0;
}

static const char *connect_attempt(struct aor_upstream_h1_xfer *x);

/* a reused connection that failed before any response byte: the peer closed it while it sat in the pool */
static int closed_while_pooled(struct aor_upstream_h1_xfer *x, h2o_http1client_t *client, const char *errstr)
{
    return x->reused && x->stale_retries < MAX_STALE_RETRIES && client->sock != NULL && client->sock->input->size == 0 &&
           (strcmp(errstr, "I/O error (send request)") == 0 || strcmp(errstr, "I/O error (head)") == 0);
}

static h2o_http1client_body_cb on_head(h2o_http1client_t *client, const char *errstr, int minor_version, int status,
                                       h2o_iovec_t msg, h2o_header_t *headers, size_t num_headers, int rlen)
{
    struct aor_upstream_h1_xfer *x = client->data;
    int cancelled = 0;

    if (errstr != NULL && errstr != h2o_http1client_error_is_eos) {
        /* http1client frees `client` after we return */
        x->detail = errstr;
        x->client = NULL;
        if (closed_while_pooled(x, client, errstr)) {
            const char *err;
            ++x->stale_retries;
            if ((err = connect_attempt(x)) == NULL)
                return NULL;
            x->detail = err;
            finish(x, aor_upstream_h1_err_connect);
            return NULL;
        }
        finish(x, is_timeout(errstr) ? aor_upstream_h1_err_timeout : aor_upstream_h1_err_io);
        return NULL;
    }
    x->cancelled = &cancelled;
    x->on_head(x, status, headers, num_headers);
    if (cancelled)
        return NULL;
    x->cancelled = NULL;
    if (errstr == h2o_http1client_error_is_eos) {
        /* no body (HEAD, 204, 304); the connection is pooled after we return */
        finish(x, NULL);
        return NULL;
    }
    return on_body;
}

static h2o_http1client_head_cb on_connect(h2o_http1client_t *client, const char *errstr, h2o_iovec_t **reqbufs, size_t *reqbufcnt,
                                          int *method_is_head)
{
    struct aor_upstream_h1_xfer *x = client->data;

    if (errstr != NULL) {
        x->client = NULL;
        x->detail = errstr;
        if (x->connecting) { /* failed inside connect_with_pool: the starter reports it */
            x->sync_error = errstr;
            return NULL;
        }
        finish(x, strcmp(errstr, "connection timeout") == 0 ? aor_upstream_h1_err_timeout : aor_upstream_h1_err_connect);
        return NULL;
    }
    x->reused = x->connecting;
    if (!x->reused) {
        int on = 1, fd = h2o_socket_get_fd(client->sock);
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
    }
    /* from here on the client's I/O timer is the whole-transfer bound (see the top of the file) */
    client->ctx = &x->timing->xfer_ctx;
    *reqbufs = x->reqbufs;
    *reqbufcnt = x->reqbufs[1].len != 0 ? 2 : 1;
    *method_is_head = x->is_head;
    return on_head;
}

/* starts (or restarts) the connection phase; returns h2o's words if it failed synchronously */
static const char *connect_attempt(struct aor_upstream_h1_xfer *x)
{
    x->sync_error = NULL;
    x->connecting = 1;
    h2o_http1client_connect_with_pool(&x->client, x, &x->timing->connect_ctx, &x->origin->pool, on_connect);
    x->connecting = 0;
    if (x->sync_error != NULL)
        x->client = NULL;
    return x->sync_error;
}

static void on_deadline(h2o_timeout_entry_t *entry)
{
    struct aor_upstream_h1_xfer *x = H2O_STRUCT_FROM_MEMBER(struct aor_upstream_h1_xfer, deadline, entry);

    /* a timer callback: no http1client callback of this transfer is running */
    if (x->client != NULL)
        h2o_http1client_cancel(x->client);
    x->detail = "the whole-transfer deadline passed";
    finish(x, aor_upstream_h1_err_timeout);
}

int aor_upstream_h1_start(struct aor_upstream_h1 *h1, struct aor_upstream_h1_xfer *x, const struct aor_upstream_h1_target *t,
                          h2o_iovec_t head, h2o_iovec_t body, int is_head, uint64_t connect_timeout_ms, uint64_t total_timeout_ms)
{
    const char *err;

    x->detail = NULL;
    if ((x->timing = timing_for(h1, connect_timeout_ms, total_timeout_ms)) == NULL) {
        x->detail = "too many different timeouts in flight";
        return -1;
    }
    x->origin = t->origin;
    x->client = NULL;
    x->reqbufs[0] = head;
    x->reqbufs[1] = body;
    x->is_head = is_head;
    x->reused = 0;
    x->stale_retries = 0;
    x->paused = 0;
    x->cancelled = NULL;
    x->active = 1;
    memset(&x->deadline, 0, sizeof(x->deadline));
    x->deadline.cb = on_deadline;
    h2o_timeout_link(h1->loop, &x->timing->total_timeout, &x->deadline);
    h2o_linklist_insert(&h1->active, &x->link);
    if ((err = connect_attempt(x)) != NULL) {
        detach(x);
        x->detail = err;
        return -1;
    }
    return 0;
}

void aor_upstream_h1_cancel(struct aor_upstream_h1_xfer *x)
{
    if (!x->active)
        return;
    if (x->cancelled != NULL)
        *x->cancelled = 1; /* inside its callback: the trampoline makes http1client close it */
    else if (x->client != NULL)
        h2o_http1client_cancel(x->client);
    detach(x);
}

void aor_upstream_h1_pause(struct aor_upstream_h1_xfer *x)
{
    h2o_socket_t *sock;

    if (!x->active || x->paused || x->client == NULL || (sock = x->client->sock) == NULL || sock->_cb.read == NULL)
        return;
    x->reader = sock->_cb.read;
    h2o_socket_read_stop(sock);
    x->paused = 1;
}

void aor_upstream_h1_resume(struct aor_upstream_h1_xfer *x)
{
    if (!x->paused)
        return;
    x->paused = 0;
    if (x->active && x->client != NULL && x->client->sock != NULL)
        h2o_socket_read_start(x->client->sock, x->reader);
}
