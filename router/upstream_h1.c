/*
 * upstream_h1.c — see upstream_h1.h.
 *
 * Connections. Each origin (scheme, host, port) of a worker has one list of every
 * connection it opened, an idle stack (most recently used on top, so the spare ones age
 * out) and a FIFO of transfers waiting for a connection. A connection is opened only for
 * a waiting transfer and only below the origin's cap; when it is ready (TCP, then TLS) it
 * goes to the first waiter or, if none is left, to the idle stack — a transfer cancelled
 * meanwhile therefore never wastes it. A connect that fails fails the first waiter, so no
 * waiter is left behind a connect that will not come. From the connect on, the socket is
 * always read (idle included): that is how an idle connection the backend closed is
 * dropped at once, and it costs no syscall per reuse (no MSG_PEEK, no epoll re-arm, no
 * dup/close as h2o 2.2.5's socketpool did on each return and reuse).
 *
 * Lifetime: a connection is freed when it is closed, except inside its own read or write
 * callback (depth > 0): then when that returns. Its libuv handle (struct tcp_box) lives
 * until libuv's close callback; the h2o socket wrapping it frees itself on close.
 *
 * What this relies on in h2o 2.2.5 (lib/common/socket.c, socket/uv-binding.c.h):
 *  - h2o_uv_socket_create wraps a connected uv_tcp_t; h2o_socket_close never calls our
 *    callbacks afterwards (the write callback is cleared, reading is stopped).
 *  - its libuv read callback reports EOF and a read error alike (h2o_socket_error_closed for
 *    TCP, h2o_socket_error_io for TLS), and for TLS reports libuv's "nothing read" (nread 0)
 *    as an error too. We put our own function in the stream's read_cb in front of h2o's: it
 *    records the libuv status (UV_EOF vs UV_ECONNRESET, ...) and swallows nread 0.
 *  - h2o_socket_ssl_handshake checks the name itself after the handshake, but not on TLS 1.3;
 *    OpenSSL checks it in chain verification instead (verify_chain_and_name), so h2o's
 *    "certificate name mismatch" is redundant and ignored (it also misjudges IP addresses).
 *  - the hostinfo resolver answers on the worker's loop through its multithread receiver.
 *  - a TLS socket's BIO carries the h2o socket as its data (setup_bio): the info callback finds
 *    the connection that read a close_notify through it.
 *  - the response's bytes are parsed by h1resp.c (picohttpparser from libh2o).
 */
#include <errno.h>
#include <stdarg.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include "h1resp.h"
#include "log.h"
#include "upstream_h1.h"

#define POOL_IDLE_MS 30000         /* an idle pooled connection is closed after this */
#define DRAIN_MS 1000              /* a cancelled transfer's response is read to its end for at most this long ... */
#define DRAIN_MAX_BODY (64 * 1024) /* ... and this many body bytes, to keep the connection; else it is closed */
#define MAX_TIMEOUTS 16            /* distinct connect/total durations in use at once */
#define MAX_ADDRS 4                /* addresses of a resolved name tried in turn */

const char aor_upstream_h1_err_connect[] = "connect failed";
const char aor_upstream_h1_err_timeout[] = "timeout";
const char aor_upstream_h1_err_io[] = "connection failed";
const char aor_upstream_h1_err_local[] = "local resource exhausted";

struct aor_upstream_h1_origin {
    struct aor_upstream_h1 *h1;
    int is_ssl;
    uint16_t port;
    char *host;                  /* NUL-terminated, IPv6 without brackets: resolver input, SNI and verified name */
    char serv[8];                /* the port as text, for the resolver */
    struct sockaddr_storage num; /* the host when it is a numeric address */
    socklen_t num_len;           /* 0: a name, resolved per new connection */
    unsigned cap;                /* connections allowed (the latest start's max_conns) */
    unsigned num_conns;          /* open or opening */
    unsigned num_connecting;     /* not yet ready */
    unsigned num_resolving;      /* ... of which still waiting for the resolver */
    unsigned num_waiting;
    h2o_timeout_t *connect_timeout; /* the latest start's connect bound, for the connects it causes */
    h2o_linklist_t conns;           /* every connection */
    h2o_linklist_t idle;            /* idle connections, most recently used first */
    h2o_linklist_t waiters;         /* transfers waiting for a connection, oldest first */
};

enum conn_state {
    CONN_CONNECTING, /* resolving, TCP connect or TLS handshake */
    CONN_IDLE,
    CONN_BUSY,     /* carrying a transfer */
    CONN_DRAINING, /* reading the response of a cancelled transfer, to pool the connection */
};

/* the libuv handle of a connection; freed by libuv's close callback (the connect request must outlive a close) */
struct tcp_box {
    uv_tcp_t tcp; /* first: the close callback gets this pointer */
    uv_connect_t creq;
    struct aor_upstream_h1_conn *conn; /* NULL once the connection let go of the box */
};

struct aor_upstream_h1_conn {
    struct aor_upstream_h1_origin *origin;
    enum conn_state state;
    struct aor_upstream_h1_xfer *xfer; /* CONN_BUSY: the transfer */
    struct tcp_box *box;
    h2o_socket_t *sock; /* once TCP is connected */
    h2o_hostinfo_getaddr_req_t *getaddr;
    struct sockaddr_storage addrs[MAX_ADDRS];
    socklen_t addr_lens[MAX_ADDRS];
    size_t num_addrs, next_addr;
    h2o_timeout_entry_t timer; /* connect bound, idle expiry, drain bound, or a deferred failure */
    const char *failure;       /* a connect failure waiting for its (deferred) report */
    char failure_detail[128];
    uv_read_cb h2o_read_cb; /* h2o's read callback, which ours fronts */
    ssize_t read_status;    /* libuv's last negative read result (UV_EOF when the peer closed cleanly) */
    int tls_close_notify;   /* TLS: the backend sent close_notify (a FIN alone may be a truncation) */
    int depth;              /* inside its read/write callback: a close defers the free */
    int closed;
    int is_head;              /* the request is a HEAD */
    int reused;               /* it served a complete response before */
    int writing;              /* the request's write callback is due */
    int req_sent;             /* every byte of the request was handed to the kernel */
    h2o_linklist_t link;      /* in origin->conns */
    h2o_linklist_t idle_link; /* in origin->idle */
    /* the response being read */
    int phase; /* 0 head, 1 body */
    int got_bytes;
    int keep_alive;
    uint64_t body_bytes; /* read since the head, or since a cancel (draining) */
    struct aor_h1resp_parser parser;
    struct aor_h1resp_body body;
};

struct aor_upstream_h1 {
    uv_loop_t *loop;
    h2o_multithread_receiver_t *getaddr;
    SSL_CTX *tls;
    h2o_timeout_t *timeouts[MAX_TIMEOUTS]; /* connect and total bounds, by duration */
    size_t num_timeouts;
    h2o_timeout_t idle_timeout, drain_timeout, zero_timeout;
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

/* a close_notify from a backend: noted on its connection (h2o's socket is the BIO's data); a body
 * delimited by the close has ended only then, not at a bare FIN */
static void on_tls_info(const SSL *ssl, int where, int ret)
{
    BIO *bio;
    h2o_socket_t *sock;
    struct aor_upstream_h1_conn *c;

    if ((where & SSL_CB_READ_ALERT) == 0 || (ret & 0xff) != SSL3_AD_CLOSE_NOTIFY)
        return;
    if ((bio = SSL_get_rbio(ssl)) == NULL || (sock = BIO_get_data(bio)) == NULL || (c = sock->data) == NULL)
        return; /* a connection already let go of (h2o's TLS shutdown) */
    c->tls_close_notify = 1;
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
    SSL_CTX_set_info_callback(ctx, on_tls_info);
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
    h2o_timeout_init(loop, &h1->idle_timeout, POOL_IDLE_MS);
    h2o_timeout_init(loop, &h1->drain_timeout, DRAIN_MS);
    h2o_timeout_init(loop, &h1->zero_timeout, 0);
    h2o_linklist_init_anchor(&h1->active);
    return h1;
}

static void conn_close(struct aor_upstream_h1_conn *c);
static void xfer_detach(struct aor_upstream_h1_xfer *x);

void aor_upstream_h1_close(struct aor_upstream_h1 *h1)
{
    size_t i;

    if (h1 == NULL)
        return;
    /* every transfer first: a connection closing must find no waiter to open another for */
    while (!h2o_linklist_is_empty(&h1->active))
        xfer_detach(H2O_STRUCT_FROM_MEMBER(struct aor_upstream_h1_xfer, link, h1->active.next));
    for (i = 0; i != h1->num_origins; ++i) {
        struct aor_upstream_h1_origin *o = h1->origins[i];
        while (!h2o_linklist_is_empty(&o->conns))
            conn_close(H2O_STRUCT_FROM_MEMBER(struct aor_upstream_h1_conn, link, o->conns.next));
    }
    for (i = 0; i != h1->num_timeouts; ++i)
        h2o_timeout_dispose(h1->loop, h1->timeouts[i]);
    h2o_timeout_dispose(h1->loop, &h1->idle_timeout);
    h2o_timeout_dispose(h1->loop, &h1->drain_timeout);
    h2o_timeout_dispose(h1->loop, &h1->zero_timeout);
}

void aor_upstream_h1_free(struct aor_upstream_h1 *h1)
{
    size_t i;

    if (h1 == NULL)
        return;
    for (i = 0; i != h1->num_origins; ++i) {
        free(h1->origins[i]->host);
        free(h1->origins[i]);
    }
    for (i = 0; i != h1->num_targets; ++i)
        free(h1->targets[i]);
    for (i = 0; i != h1->num_timeouts; ++i)
        free(h1->timeouts[i]);
    tls_release();
    free(h1);
}

/* the timeout list for `ms` (connect and total bounds; reloads may change them) */
static h2o_timeout_t *timeout_for(struct aor_upstream_h1 *h1, uint64_t ms, const h2o_timeout_t *taken)
{
    h2o_timeout_t *t;
    size_t i;

    for (i = 0; i != h1->num_timeouts; ++i)
        if (h1->timeouts[i]->timeout == ms)
            return h1->timeouts[i];
    if (h1->num_timeouts != MAX_TIMEOUTS) {
        if ((t = malloc(sizeof(*t))) == NULL)
            return NULL;
        h2o_timeout_init(h1->loop, t, ms);
        h1->timeouts[h1->num_timeouts++] = t;
        return t;
    }
    /* reloads changed the timeouts more often than that: take over a list nothing waits on */
    for (i = 0; i != h1->num_timeouts; ++i) {
        t = h1->timeouts[i];
        if (t != taken && h2o_linklist_is_empty(&t->_entries)) {
            t->timeout = ms;
            return t;
        }
    }
    return NULL;
}

static struct aor_upstream_h1_origin *origin_for(struct aor_upstream_h1 *h1, int is_ssl, h2o_iovec_t host, uint16_t port)
{
    struct aor_upstream_h1_origin *o;
    struct sockaddr_in *sin;
    struct sockaddr_in6 *sin6;
    size_t i;

    for (i = 0; i != h1->num_origins; ++i) {
        o = h1->origins[i];
        if (o->is_ssl == is_ssl && o->port == port && strlen(o->host) == host.len && memcmp(o->host, host.base, host.len) == 0)
            return o;
    }
    if (h1->num_origins == AOR_UPSTREAM_H1_MAX_ORIGINS || (o = calloc(1, sizeof(*o))) == NULL)
        return NULL;
    if ((o->host = h2o_strdup(NULL, host.base, host.len).base) == NULL) {
        free(o);
        return NULL;
    }
    o->h1 = h1;
    o->is_ssl = is_ssl;
    o->port = port;
    snprintf(o->serv, sizeof(o->serv), "%u", (unsigned)port);
    sin = (struct sockaddr_in *)&o->num;
    sin6 = (struct sockaddr_in6 *)&o->num;
    if (inet_pton(AF_INET, o->host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        o->num_len = sizeof(*sin);
    } else if (inet_pton(AF_INET6, o->host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        o->num_len = sizeof(*sin6);
    }
    h2o_linklist_init_anchor(&o->conns);
    h2o_linklist_init_anchor(&o->idle);
    h2o_linklist_init_anchor(&o->waiters);
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
        (parsed.scheme != &H2O_URL_SCHEME_HTTP && parsed.scheme != &H2O_URL_SCHEME_HTTPS) || parsed.host.len == 0 ||
        memchr(parsed.host.base, '\0', parsed.host.len) != NULL) {
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

/* ---- errors ----------------------------------------------------------------------------- */

/* the router's own shortage, not the backend's (uv error codes are -errno) */
static int uv_err_is_local(int err)
{
    return err == UV_EMFILE || err == UV_ENFILE || err == UV_ENOBUFS || err == UV_ENOMEM || err == UV_EADDRNOTAVAIL;
}

/* the resolver's own failure (h2o passes gai_strerror's words): no answer, out of memory, a system error */
static int gai_err_is_local(const char *errstr)
{
    return strcmp(errstr, gai_strerror(EAI_AGAIN)) == 0 || strcmp(errstr, gai_strerror(EAI_MEMORY)) == 0 ||
           strcmp(errstr, gai_strerror(EAI_SYSTEM)) == 0;
}

/* libuv's words for an error code (thread-safe) */
static const char *uv_words(int err, char *buf, size_t len)
{
    return uv_strerror_r(err, buf, len);
}

/* ---- transfers: leaving the module -------------------------------------------------- */

/* unlinks a transfer from everything of ours (its connection included); it is no longer active */
static void xfer_detach(struct aor_upstream_h1_xfer *x)
{
    if (h2o_timeout_is_linked(&x->deadline))
        h2o_timeout_unlink(&x->deadline);
    if (h2o_timeout_is_linked(&x->wait))
        h2o_timeout_unlink(&x->wait);
    if (h2o_linklist_is_linked(&x->link))
        h2o_linklist_unlink(&x->link);
    if (x->waiting) {
        h2o_linklist_unlink(&x->wait_link);
        --x->origin->num_waiting;
        x->waiting = 0;
    }
    if (x->conn != NULL) {
        x->conn->xfer = NULL;
        x->conn = NULL;
    }
    x->active = 0;
    x->paused = 0;
}

/* the transfer is over: tell the owner, and touch nothing afterwards (it may be restarted or freed) */
static void xfer_finish(struct aor_upstream_h1_xfer *x, const char *errstr)
{
    xfer_detach(x);
    x->on_done(x, errstr);
}

static void xfer_fail(struct aor_upstream_h1_xfer *x, const char *errstr, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void xfer_fail(struct aor_upstream_h1_xfer *x, const char *errstr, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(x->detail_buf, sizeof(x->detail_buf), fmt, ap);
    va_end(ap);
    x->detail = x->detail_buf;
    xfer_finish(x, errstr);
}

/* ---- connections -------------------------------------------------------------------- */

static void on_read(h2o_socket_t *sock, const char *err);
static void conn_assign(struct aor_upstream_h1_conn *c, struct aor_upstream_h1_xfer *x);
static void maybe_connect(struct aor_upstream_h1_origin *o);

static void box_closed(uv_handle_t *handle)
{
    free(handle); /* the box: its uv_tcp_t comes first */
}

/* in front of h2o's libuv read callback: learns how a read ended, drops "nothing read" */
static void on_uv_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    h2o_socket_t *sock = stream->data;
    struct aor_upstream_h1_conn *c = sock->data;

    if (nread == 0)
        return; /* EAGAIN; h2o's TLS layer would take it for an error */
    if (nread < 0)
        c->read_status = nread;
    c->h2o_read_cb(stream, nread, buf);
}

static void conn_read_start(struct aor_upstream_h1_conn *c)
{
    uv_stream_t *stream = (uv_stream_t *)&c->box->tcp;

    h2o_socket_read_start(c->sock, on_read);
    if (stream->read_cb != on_uv_read) {
        c->h2o_read_cb = stream->read_cb;
        stream->read_cb = on_uv_read;
    }
}

/* the connection is gone for good; freed now, or when the callback we are in returns */
static void conn_close(struct aor_upstream_h1_conn *c)
{
    struct aor_upstream_h1_origin *o = c->origin;

    if (c->closed)
        return;
    c->closed = 1;
    if (h2o_timeout_is_linked(&c->timer))
        h2o_timeout_unlink(&c->timer);
    if (h2o_linklist_is_linked(&c->idle_link))
        h2o_linklist_unlink(&c->idle_link);
    h2o_linklist_unlink(&c->link);
    --o->num_conns;
    if (c->state == CONN_CONNECTING)
        --o->num_connecting;
    if (c->xfer != NULL) {
        c->xfer->conn = NULL;
        c->xfer = NULL;
    }
    if (c->getaddr != NULL) {
        h2o_hostinfo_getaddr_cancel(c->getaddr);
        c->getaddr = NULL;
        --o->num_resolving;
    }
    if (c->sock != NULL) {
        uv_stream_t *stream = (uv_stream_t *)&c->box->tcp;
        if (stream->read_cb == on_uv_read) /* h2o's TLS shutdown may read on after we are gone */
            stream->read_cb = c->h2o_read_cb;
        c->sock->data = NULL;
        h2o_socket_close(c->sock); /* frees the box through box_closed */
        c->sock = NULL;
    } else if (c->box != NULL) {
        c->box->conn = NULL;
        uv_close((uv_handle_t *)&c->box->tcp, box_closed);
    }
    c->box = NULL;
    if (c->depth == 0)
        free(c);
    /* a place came free: a transfer waiting over the cap may connect now */
    maybe_connect(o);
}

/* leaving one of the connection's callbacks */
static void conn_unref(struct aor_upstream_h1_conn *c)
{
    if (--c->depth == 0 && c->closed)
        free(c);
}

/* the request was handed to the kernel whole (its write callback may still be due) */
static int request_sent(struct aor_upstream_h1_conn *c)
{
    return c->req_sent || (c->writing && c->box != NULL && c->box->tcp.write_queue_size == 0);
}

static void on_idle_timeout(h2o_timeout_entry_t *entry)
{
    conn_close(H2O_STRUCT_FROM_MEMBER(struct aor_upstream_h1_conn, timer, entry));
}

static void on_drain_timeout(h2o_timeout_entry_t *entry)
{
    conn_close(H2O_STRUCT_FROM_MEMBER(struct aor_upstream_h1_conn, timer, entry));
}

/* `c` has nothing to do: the first waiter that may take it gets it, else it goes idle */
static void conn_release(struct aor_upstream_h1_conn *c, int fresh)
{
    struct aor_upstream_h1_origin *o = c->origin;
    h2o_linklist_t *l;

    if (h2o_timeout_is_linked(&c->timer))
        h2o_timeout_unlink(&c->timer);
    if (!h2o_socket_is_reading(c->sock))
        conn_read_start(c); /* its last transfer ended paused */
    for (l = o->waiters.next; l != &o->waiters; l = l->next) {
        struct aor_upstream_h1_xfer *x = H2O_STRUCT_FROM_MEMBER(struct aor_upstream_h1_xfer, wait_link, l);
        if (fresh || !x->retried) { /* a transfer moved off a dead pooled connection takes a new one only */
            conn_assign(c, x);
            return;
        }
    }
    if (o->num_waiting != 0 && o->num_conns >= o->cap) {
        conn_close(c); /* only waiters for a fresh connection, at the cap: make room for one */
        return;
    }
    c->state = CONN_IDLE;
    h2o_linklist_insert(o->idle.next, &c->idle_link); /* on top */
    c->timer.cb = on_idle_timeout;
    h2o_timeout_link(o->h1->loop, &o->h1->idle_timeout, &c->timer);
}

/* TCP (and TLS) are up */
static void conn_ready(struct aor_upstream_h1_conn *c)
{
    --c->origin->num_connecting;
    c->state = CONN_IDLE;
    conn_read_start(c);
    conn_release(c, 1);
}

/* the connect failed: the oldest waiter (if any) fails with it. From a loop callback only */
static void conn_connect_failed(struct aor_upstream_h1_conn *c, const char *errstr, const char *detail)
{
    struct aor_upstream_h1_origin *o = c->origin;
    struct aor_upstream_h1_xfer *x = NULL;

    if (!h2o_linklist_is_empty(&o->waiters)) {
        x = H2O_STRUCT_FROM_MEMBER(struct aor_upstream_h1_xfer, wait_link, o->waiters.next);
        h2o_linklist_unlink(&x->wait_link);
        --o->num_waiting;
        x->waiting = 0;
    }
    if (x == NULL)
        AOR_LOG(AOR_LOG_DEBUG, "upstream", "%s:%u: %s (no transfer was waiting)", o->host, (unsigned)o->port, detail);
    if (x != NULL)
        snprintf(x->detail_buf, sizeof(x->detail_buf), "%s", detail);
    conn_close(c);
    if (x != NULL) {
        x->detail = x->detail_buf;
        xfer_finish(x, errstr);
    }
}

static void on_deferred_failure(h2o_timeout_entry_t *entry)
{
    struct aor_upstream_h1_conn *c = H2O_STRUCT_FROM_MEMBER(struct aor_upstream_h1_conn, timer, entry);
    char detail[sizeof(c->failure_detail)];

    memcpy(detail, c->failure_detail, sizeof(detail));
    conn_connect_failed(c, c->failure, detail);
}

/* a failure found synchronously is reported from the loop, so no callback runs inside a start */
static void conn_defer_failure(struct aor_upstream_h1_conn *c, const char *errstr, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void conn_defer_failure(struct aor_upstream_h1_conn *c, const char *errstr, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(c->failure_detail, sizeof(c->failure_detail), fmt, ap);
    va_end(ap);
    c->failure = errstr;
    if (h2o_timeout_is_linked(&c->timer))
        h2o_timeout_unlink(&c->timer);
    c->timer.cb = on_deferred_failure;
    h2o_timeout_link(c->origin->h1->loop, &c->origin->h1->zero_timeout, &c->timer);
}

static void on_connect_timeout(h2o_timeout_entry_t *entry)
{
    struct aor_upstream_h1_conn *c = H2O_STRUCT_FROM_MEMBER(struct aor_upstream_h1_conn, timer, entry);
    char detail[160];

    if (c->getaddr != NULL) { /* still waiting for the router's resolver: its trouble, not the backend's */
        snprintf(detail, sizeof(detail), "resolving %s took longer than the connect timeout", c->origin->host);
        conn_connect_failed(c, aor_upstream_h1_err_local, detail);
        return;
    }
    snprintf(detail, sizeof(detail), "connect to %s:%u timed out", c->origin->host, (unsigned)c->origin->port);
    conn_connect_failed(c, aor_upstream_h1_err_timeout, detail);
}

static void on_handshake(h2o_socket_t *sock, const char *err)
{
    struct aor_upstream_h1_conn *c = sock->data;
    char detail[128];

    /* h2o's own name check is redundant (OpenSSL verified the name with the chain) and wrong for IP addresses */
    if (err != NULL && err != h2o_socket_error_ssl_cert_name_mismatch) {
        snprintf(detail, sizeof(detail), "TLS handshake with %s:%u: %s", c->origin->host, (unsigned)c->origin->port, err);
        conn_connect_failed(c, aor_upstream_h1_err_connect, detail);
        return;
    }
    conn_ready(c);
}

static void tcp_connect(struct aor_upstream_h1_conn *c);

static void on_tcp_connect(uv_connect_t *req, int status)
{
    struct tcp_box *box = H2O_STRUCT_FROM_MEMBER(struct tcp_box, creq, req);
    struct aor_upstream_h1_conn *c = box->conn;
    struct aor_upstream_h1_origin *o;
    char words[80], detail[128];
    int on = 1;
    uv_os_fd_t fd;

    if (status == UV_ECANCELED || c == NULL)
        return; /* closed meanwhile */
    o = c->origin;
    if (status != 0) {
        c->box = NULL;
        box->conn = NULL;
        uv_close((uv_handle_t *)&box->tcp, box_closed);
        if (!uv_err_is_local(status) && c->next_addr < c->num_addrs) {
            tcp_connect(c); /* the name's next address */
            return;
        }
        snprintf(detail, sizeof(detail), "connect to %s:%u: %s", o->host, (unsigned)o->port,
                 uv_words(status, words, sizeof(words)));
        conn_connect_failed(c, uv_err_is_local(status) ? aor_upstream_h1_err_local : aor_upstream_h1_err_connect, detail);
        return;
    }
    if (uv_fileno((uv_handle_t *)&box->tcp, &fd) == 0) {
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
    }
    c->sock = h2o_uv_socket_create((uv_stream_t *)&box->tcp, box_closed);
    c->sock->data = c;
    if (o->is_ssl)
        h2o_socket_ssl_handshake(c->sock, o->h1->tls, o->host, on_handshake);
    else
        conn_ready(c);
}

/* connects to the next address; a failure on the spot is reported from the loop */
static void tcp_connect(struct aor_upstream_h1_conn *c)
{
    struct aor_upstream_h1_origin *o = c->origin;
    char words[80];
    int r = 0;

    while (c->next_addr < c->num_addrs) {
        struct tcp_box *box = malloc(sizeof(*box));
        size_t i = c->next_addr++;
        if (box == NULL) {
            conn_defer_failure(c, aor_upstream_h1_err_local, "connect to %s:%u: out of memory", o->host, (unsigned)o->port);
            return;
        }
        uv_tcp_init(o->h1->loop, &box->tcp); /* no socket yet: that is made by the connect */
        box->conn = c;
        c->box = box;
        if ((r = uv_tcp_connect(&box->creq, &box->tcp, (struct sockaddr *)&c->addrs[i], on_tcp_connect)) == 0)
            return;
        c->box = NULL;
        box->conn = NULL;
        uv_close((uv_handle_t *)&box->tcp, box_closed);
        if (uv_err_is_local(r))
            break;
    }
    conn_defer_failure(c, uv_err_is_local(r) ? aor_upstream_h1_err_local : aor_upstream_h1_err_connect, "connect to %s:%u: %s",
                       o->host, (unsigned)o->port, r != 0 ? uv_words(r, words, sizeof(words)) : "no address");
}

static void on_getaddr(h2o_hostinfo_getaddr_req_t *req, const char *errstr, struct addrinfo *res, void *data)
{
    struct aor_upstream_h1_conn *c = data;
    struct aor_upstream_h1_origin *o = c->origin;
    char detail[160];

    c->getaddr = NULL;
    --o->num_resolving;
    if (errstr != NULL) {
        snprintf(detail, sizeof(detail), "resolving %s: %s", o->host, errstr);
        conn_connect_failed(c, gai_err_is_local(errstr) ? aor_upstream_h1_err_local : aor_upstream_h1_err_connect, detail);
        return;
    }
    for (; res != NULL && c->num_addrs != MAX_ADDRS; res = res->ai_next) {
        if (res->ai_addrlen > sizeof(c->addrs[0]))
            continue;
        memcpy(&c->addrs[c->num_addrs], res->ai_addr, res->ai_addrlen);
        c->addr_lens[c->num_addrs++] = res->ai_addrlen;
    }
    tcp_connect(c);
}

/* opens one more connection to `o`; it goes to a waiter (or the pool) when ready. 0 or -1 */
static int conn_open(struct aor_upstream_h1_origin *o)
{
    struct aor_upstream_h1 *h1 = o->h1;
    struct aor_upstream_h1_conn *c = calloc(1, sizeof(*c));

    if (c == NULL)
        return -1;
    c->origin = o;
    c->state = CONN_CONNECTING;
    h2o_linklist_insert(&o->conns, &c->link);
    ++o->num_conns;
    ++o->num_connecting;
    c->timer.cb = on_connect_timeout;
    h2o_timeout_link(h1->loop, o->connect_timeout, &c->timer);
    if (o->num_len != 0) {
        memcpy(&c->addrs[0], &o->num, o->num_len);
        c->addr_lens[0] = o->num_len;
        c->num_addrs = 1;
        tcp_connect(c);
    } else {
        /* h2o's resolver threads: never the loop's own */
        ++o->num_resolving;
        c->getaddr =
            h2o_hostinfo_getaddr(h1->getaddr, h2o_iovec_init(o->host, strlen(o->host)), h2o_iovec_init(o->serv, strlen(o->serv)),
                                 AF_UNSPEC, SOCK_STREAM, IPPROTO_TCP, AI_ADDRCONFIG | AI_NUMERICSERV, on_getaddr, c);
    }
    return 0;
}

/* one connection per waiting transfer that no connect in progress will serve, up to the cap */
static void maybe_connect(struct aor_upstream_h1_origin *o)
{
    while (o->num_waiting > o->num_connecting && o->num_conns < o->cap)
        if (conn_open(o) != 0)
            break;
}

/* ---- the response ------------------------------------------------------------------- */

/* `c` fails for good: closed, and its transfer (if any) told why */
static void conn_fail(struct aor_upstream_h1_conn *c, const char *errstr, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void conn_fail(struct aor_upstream_h1_conn *c, const char *errstr, const char *fmt, ...)
{
    struct aor_upstream_h1_xfer *x = c->xfer;
    va_list ap;

    conn_close(c);
    if (x == NULL)
        return;
    va_start(ap, fmt);
    vsnprintf(x->detail_buf, sizeof(x->detail_buf), fmt, ap);
    va_end(ap);
    x->detail = x->detail_buf;
    xfer_finish(x, errstr);
}

static void xfer_wait(struct aor_upstream_h1_xfer *x, int first);

/* a pooled connection died before the request was wholly written: nothing the backend could act on
 * reached it, so the transfer moves to a fresh connection (once) */
static void conn_retry(struct aor_upstream_h1_conn *c, struct aor_upstream_h1_xfer *x)
{
    c->xfer = NULL;
    x->conn = NULL;
    conn_close(c);
    x->retried = 1;
    xfer_wait(x, 1);
}

/* the response is complete: the connection is pooled (or closed), then the transfer ends */
static void complete(struct aor_upstream_h1_conn *c)
{
    struct aor_upstream_h1_xfer *x = c->xfer;
    int reusable = c->keep_alive && !c->writing && c->sock->input->size == 0;

    if (x != NULL) {
        c->xfer = NULL;
        x->conn = NULL;
    }
    c->phase = 0;
    if (reusable) {
        c->reused = 1;
        conn_release(c, 0); /* before the owner hears of it: a request it starts now may take this one */
    } else {
        conn_close(c);
    }
    if (x != NULL) {
        x->detail = NULL;
        xfer_finish(x, NULL);
    }
}

/* body bytes: to the transfer, or counted and dropped while draining. 1: go on reading */
static int deliver(struct aor_upstream_h1_conn *c, const char *data, size_t len)
{
    c->body_bytes += len;
    if (c->xfer != NULL) {
        if (len != 0)
            c->xfer->on_body(c->xfer, data, len);
        return !c->closed;
    }
    if (c->body_bytes > DRAIN_MAX_BODY) {
        conn_close(c);
        return 0;
    }
    return 1;
}

/* parses the response head when it is all in. 1: go on with the body bytes in the buffer; 0: stop */
static int read_head(struct aor_upstream_h1_conn *c)
{
    struct aor_h1resp_head head;
    ssize_t ret;

    for (;;) {
        h2o_buffer_t *in = c->sock->input;
        if ((ret = aor_h1resp_parse_head(&c->parser, in->bytes, in->size, c->is_head, &head)) < 0) {
            conn_fail(c, aor_upstream_h1_err_io, "%s", head.error);
            return 0;
        }
        if (ret == 0)
            return 0;
        if (head.status >= 200)
            break;
        h2o_buffer_consume(&c->sock->input, (size_t)ret); /* an interim 1xx head */
        if (c->sock->input->size == 0)
            return 0;
    }
    c->body = head.body;
    c->keep_alive = head.keep_alive;
    c->phase = 1;
    c->body_bytes = 0;
    if (c->xfer != NULL) {
        c->xfer->on_head(c->xfer, head.status, head.headers, head.num_headers);
        if (c->closed)
            return 0;
    }
    h2o_buffer_consume(&c->sock->input, (size_t)ret);
    if (c->body.framing == AOR_H1RESP_NONE || (c->body.framing == AOR_H1RESP_LENGTH && c->body.remaining == 0)) {
        complete(c);
        return 0;
    }
    return c->sock->input->size != 0;
}

/* body bytes in the input buffer: delivered without the framing, the end found */
static void read_body(struct aor_upstream_h1_conn *c)
{
    h2o_buffer_t *in = c->sock->input;
    size_t len = in->size, data_len, extra;
    int ret;

    if ((ret = aor_h1resp_body_step(&c->body, in->bytes, len, &data_len, &extra)) < 0) {
        conn_fail(c, aor_upstream_h1_err_io, "malformed chunked body");
        return;
    }
    if (data_len != 0 && !deliver(c, in->bytes, data_len))
        return;
    h2o_buffer_consume(&c->sock->input, len);
    if (ret == 1) {
        if (extra != 0)
            c->keep_alive = 0; /* bytes after the end of the answer: the connection is out of step */
        complete(c);
    }
}

/* the backend closed the connection, or reading it failed */
static void on_read_end(struct aor_upstream_h1_conn *c)
{
    struct aor_upstream_h1_xfer *x = c->xfer;
    /* over TLS only a close_notify ends a body cleanly: a FIN without one may be anybody's truncation */
    int clean = c->sock->ssl != NULL ? c->tls_close_notify : c->read_status == UV_EOF;
    char words[80];

    if (c->state != CONN_BUSY && c->state != CONN_DRAINING) {
        conn_close(c); /* idle: the backend let it go */
        return;
    }
    if (c->phase == 1 && c->body.framing == AOR_H1RESP_EOF && clean) {
        c->keep_alive = 0;
        complete(c); /* a body delimited by the close, closed cleanly */
        return;
    }
    if (c->state == CONN_DRAINING || x == NULL) {
        conn_close(c);
        return;
    }
    if (!c->got_bytes) {
        if (c->reused && !request_sent(c) && !x->retried) {
            conn_retry(c, x);
            return;
        }
        conn_fail(c, aor_upstream_h1_err_io, "%s before any response byte (%s)",
                  c->reused ? "pooled connection closed after the request was sent; not resent" : "connection closed",
                  clean ? "closed" : uv_words((int)c->read_status, words, sizeof(words)));
        return;
    }
    if (c->phase == 0) {
        conn_fail(c, aor_upstream_h1_err_io, "truncated: connection closed in the response head");
    } else if (c->body.framing == AOR_H1RESP_LENGTH) {
        conn_fail(c, aor_upstream_h1_err_io, "truncated: connection closed %llu bytes short of the content-length",
                  (unsigned long long)c->body.remaining);
    } else if (c->body.framing == AOR_H1RESP_CHUNKED) {
        conn_fail(c, aor_upstream_h1_err_io, "truncated: connection closed before the last chunk");
    } else {
        conn_fail(c, aor_upstream_h1_err_io, "truncated: read error before the end (%s)",
                  c->read_status < 0 ? uv_words((int)c->read_status, words, sizeof(words)) : "TLS error");
    }
}

static void on_read(h2o_socket_t *sock, const char *err)
{
    struct aor_upstream_h1_conn *c = sock->data;

    ++c->depth;
    if (err != NULL) {
        on_read_end(c);
    } else if (sock->input->size != 0) {
        if (c->state == CONN_BUSY || c->state == CONN_DRAINING) {
            c->got_bytes = 1;
            if (c->phase == 1 || read_head(c))
                read_body(c);
        } else {
            conn_close(c); /* bytes nobody asked for on an idle connection */
        }
    }
    conn_unref(c);
}

static void on_write_done(h2o_socket_t *sock, const char *err)
{
    struct aor_upstream_h1_conn *c = sock->data;
    struct aor_upstream_h1_xfer *x = c->xfer;

    ++c->depth;
    c->writing = 0;
    if (err == NULL) {
        c->req_sent = 1;
    } else if (x == NULL) {
        conn_close(c);
    } else if (c->reused && !c->got_bytes && !x->retried) {
        conn_retry(c, x); /* not all of it went out: the backend had closed the pooled connection */
    } else {
        conn_fail(c, aor_upstream_h1_err_io, "sending the request failed (%s)", err);
    }
    conn_unref(c);
}

/* Over plain TCP the request is first offered to the kernel directly (uv_try_write): written
 * whole, as it nearly always is, it costs one writev and no write request — libuv would
 * otherwise re-arm the socket in epoll (an epoll_ctl per request) when the write completes.
 * What is left (or an error, reported by the callback) goes through h2o's write. */
static void write_request(struct aor_upstream_h1_conn *c, h2o_iovec_t *bufs, size_t n)
{
    h2o_iovec_t rest[2];
    size_t i, k = 0;
    int written = 0;

    if (c->sock->ssl == NULL) {
        uv_buf_t ub[2];
        for (i = 0; i != n; ++i)
            ub[i] = uv_buf_init(bufs[i].base, (unsigned)bufs[i].len);
        if ((written = uv_try_write((uv_stream_t *)&c->box->tcp, ub, (unsigned)n)) < 0)
            written = 0; /* EAGAIN, or an error the write below reports */
    }
    for (i = 0; i != n; ++i) {
        size_t skip = (size_t)written < bufs[i].len ? (size_t)written : bufs[i].len;
        written -= (int)skip;
        if (skip != bufs[i].len)
            rest[k++] = h2o_iovec_init(bufs[i].base + skip, bufs[i].len - skip);
    }
    if (k == 0) {
        c->req_sent = 1;
        return;
    }
    c->writing = 1;
    h2o_socket_write(c->sock, rest, k, on_write_done);
}

/* `c` carries `x` from now on: the request goes out */
static void conn_assign(struct aor_upstream_h1_conn *c, struct aor_upstream_h1_xfer *x)
{
    struct aor_upstream_h1_origin *o = c->origin;

    if (x->waiting) {
        h2o_linklist_unlink(&x->wait_link);
        --o->num_waiting;
        x->waiting = 0;
    }
    if (h2o_timeout_is_linked(&x->wait))
        h2o_timeout_unlink(&x->wait);
    if (h2o_linklist_is_linked(&c->idle_link))
        h2o_linklist_unlink(&c->idle_link);
    if (h2o_timeout_is_linked(&c->timer))
        h2o_timeout_unlink(&c->timer);
    c->state = CONN_BUSY;
    c->xfer = x;
    x->conn = c;
    c->is_head = x->is_head;
    c->phase = 0;
    c->got_bytes = 0;
    memset(&c->parser, 0, sizeof(c->parser));
    c->read_status = 0;
    c->keep_alive = 0;
    c->req_sent = 0;
    write_request(c, x->reqbufs, x->reqbufs[1].len != 0 ? 2 : 1);
}

/* ---- transfers ---------------------------------------------------------------------- */

static void on_wait_timeout(h2o_timeout_entry_t *entry)
{
    struct aor_upstream_h1_xfer *x = H2O_STRUCT_FROM_MEMBER(struct aor_upstream_h1_xfer, wait, entry);
    struct aor_upstream_h1_origin *o = x->origin;

    if (o->num_connecting > o->num_resolving) /* a connect is under way and slow: the backend's */
        xfer_fail(x, aor_upstream_h1_err_timeout, "connect to %s:%u timed out", o->host, (unsigned)o->port);
    else
        xfer_fail(x, aor_upstream_h1_err_local, "all %u connections to %s:%u stayed busy (limits.max_backend_connections)", o->cap,
                  o->host, (unsigned)o->port);
}

static void on_deadline(h2o_timeout_entry_t *entry)
{
    struct aor_upstream_h1_xfer *x = H2O_STRUCT_FROM_MEMBER(struct aor_upstream_h1_xfer, deadline, entry);
    struct aor_upstream_h1_conn *c = x->conn;

    xfer_detach(x);
    if (c != NULL)
        conn_close(c); /* a stalled answer is not worth draining */
    x->detail = "the whole-transfer deadline passed";
    x->on_done(x, aor_upstream_h1_err_timeout);
}

/* queues `x` for a connection (first: ahead of the others), bounded by the connect timeout */
static void xfer_wait(struct aor_upstream_h1_xfer *x, int first)
{
    struct aor_upstream_h1_origin *o = x->origin;

    h2o_linklist_insert(first ? o->waiters.next : &o->waiters, &x->wait_link);
    ++o->num_waiting;
    x->waiting = 1;
    x->wait.cb = on_wait_timeout;
    h2o_timeout_link(o->h1->loop, x->connect_timeout, &x->wait);
    maybe_connect(o);
}

int aor_upstream_h1_start(struct aor_upstream_h1 *h1, struct aor_upstream_h1_xfer *x, const struct aor_upstream_h1_target *t,
                          h2o_iovec_t head, h2o_iovec_t body, int is_head, uint64_t connect_timeout_ms, uint64_t total_timeout_ms,
                          unsigned max_conns)
{
    struct aor_upstream_h1_origin *o = t->origin;
    h2o_timeout_t *connect_timeout, *total_timeout;

    x->detail = NULL;
    if ((connect_timeout = timeout_for(h1, connect_timeout_ms, NULL)) == NULL ||
        (total_timeout = timeout_for(h1, total_timeout_ms, connect_timeout)) == NULL) {
        x->detail = "too many different timeouts in flight";
        return -1;
    }
    o->cap = max_conns != 0 ? max_conns : 1;
    o->connect_timeout = connect_timeout;
    x->origin = o;
    x->conn = NULL;
    x->reqbufs[0] = head;
    x->reqbufs[1] = body;
    x->connect_timeout = connect_timeout;
    x->is_head = is_head;
    x->retried = 0;
    x->paused = 0;
    x->waiting = 0;
    x->active = 1;
    memset(&x->deadline, 0, sizeof(x->deadline));
    memset(&x->wait, 0, sizeof(x->wait));
    x->deadline.cb = on_deadline;
    h2o_timeout_link(h1->loop, total_timeout, &x->deadline);
    h2o_linklist_insert(&h1->active, &x->link);
    if (!h2o_linklist_is_empty(&o->idle))
        conn_assign(H2O_STRUCT_FROM_MEMBER(struct aor_upstream_h1_conn, idle_link, o->idle.next), x);
    else
        xfer_wait(x, 0);
    return 0;
}

void aor_upstream_h1_cancel(struct aor_upstream_h1_xfer *x)
{
    struct aor_upstream_h1_conn *c = x->conn;
    int was_paused = x->paused;

    if (!x->active)
        return;
    xfer_detach(x);
    if (c == NULL)
        return; /* it was waiting: nothing was sent; a connect it caused goes on and ends in the pool */
    if (!request_sent(c) || (c->phase == 1 && c->body.framing == AOR_H1RESP_EOF) ||
        (c->phase == 1 && c->body.framing == AOR_H1RESP_LENGTH && c->body.remaining > DRAIN_MAX_BODY)) {
        conn_close(c); /* part of a request on the wire, or too much (or no end) to read */
        return;
    }
    /* the request is out: read the answer to its end in the background and keep the connection */
    c->state = CONN_DRAINING;
    c->body_bytes = 0;
    if (h2o_timeout_is_linked(&c->timer))
        h2o_timeout_unlink(&c->timer);
    c->timer.cb = on_drain_timeout;
    h2o_timeout_link(c->origin->h1->loop, &c->origin->h1->drain_timeout, &c->timer);
    if (was_paused)
        conn_read_start(c);
}

void aor_upstream_h1_pause(struct aor_upstream_h1_xfer *x)
{
    if (!x->active || x->paused || x->conn == NULL)
        return;
    h2o_socket_read_stop(x->conn->sock);
    x->paused = 1;
}

void aor_upstream_h1_resume(struct aor_upstream_h1_xfer *x)
{
    if (!x->paused)
        return;
    x->paused = 0;
    if (x->active && x->conn != NULL)
        conn_read_start(x->conn);
}
