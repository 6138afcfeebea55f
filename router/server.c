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
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/random.h>
#include <sys/resource.h>
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
#include "deftenant.h"
#include "cred.h"
#include "jwks.h"
#include "redis.h"
#include "tokencache.h"
#include "log.h"
#include "metrics.h"
#include "status.h"
#include "pipeline.h"
#include "server.h"
#include "upstream.h"
#include "upstream_h1.h"

#define AOR_BODY_SLACK (64 * 1024)    /* see max_request_entity_size */
#define REDIS_COMMAND_TIMEOUT_MS 1000 /* hiredis 0.14 has none: our own timer per command */

static h2o_globalconf_t globalconf;
static SSL_CTX **ssl_ctxs; /* one per listener, NULL for plain ones */
static struct aor_worker *workers;
static size_t num_workers;
/* the configured listeners, plus the metrics listener when `metrics:` names one */
static struct aor_listen_conf *listens;
static size_t num_listens;
static uint16_t metrics_port; /* the metrics listener's, fixed at start; 0 = none */

uint16_t aor_server_metrics_port(void)
{
    return metrics_port;
}

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

/* ---- client connections ------------------------------------------------------------ */

uint64_t aor_inflight_body_bytes;
static unsigned client_conns;           /* counted connections of every worker (atomic) */
static unsigned metrics_conns;          /* connections on the metrics listener, every worker (atomic) */
static unsigned fd_conn_cap = UINT_MAX; /* client connections RLIMIT_NOFILE leaves room for (fit_descriptors) */

/* h2o 2.2.5's libuv socket (lib/common/socket/uv-binding.c.h) starts with these members; the
 * accept callback checks the layout on every socket before relying on it */
struct uv_socket_layout {
    h2o_socket_t super;
    struct {
        uv_stream_t *stream;
        uv_close_cb close_cb;
    } uv;
};

static struct aor_worker *worker_of_listener(uv_stream_t *listener)
{
    h2o_accept_ctx_t *actx = listener->data;
    return H2O_STRUCT_FROM_MEMBER(struct aor_worker, ctx, actx->ctx);
}

static void on_conn_closed(uv_handle_t *h)
{
    struct aor_client_conn *c = (struct aor_client_conn *)h;

    if (c->counted)
        __atomic_fetch_sub(&client_conns, 1, __ATOMIC_RELAXED);
    else if (c->metrics)
        __atomic_fetch_sub(&metrics_conns, 1, __ATOMIC_RELAXED);
    h2o_linklist_unlink(&c->link);
    if (h2o_linklist_is_linked(&c->goaway_link))
        h2o_linklist_unlink(&c->goaway_link);
    if (h2o_linklist_is_linked(&c->settle_link))
        h2o_linklist_unlink(&c->settle_link);
    free(c);
}

struct aor_client_conn *aor_server_conn_of(h2o_conn_t *conn)
{
    h2o_socket_t *sock = conn->callbacks->get_socket != NULL ? conn->callbacks->get_socket(conn) : NULL;
    struct aor_client_conn *c;

    if (sock == NULL)
        return NULL;
    c = (struct aor_client_conn *)((struct uv_socket_layout *)sock)->uv.stream;
    return c != NULL && c->sock == sock ? c : NULL;
}

static void conn_shutdown(struct aor_client_conn *c)
{
    uv_os_fd_t fd;

    if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
        shutdown(fd, SHUT_RDWR); /* h2o reads EOF and closes the connection and its streams */
}

static void on_goaway_timer(uv_timer_t *t)
{
    struct aor_worker *w = H2O_STRUCT_FROM_MEMBER(struct aor_worker, goaway_timer, t);

    while (!h2o_linklist_is_empty(&w->goaways)) {
        struct aor_client_conn *c = H2O_STRUCT_FROM_MEMBER(struct aor_client_conn, goaway_link, w->goaways.next);
        uv_os_fd_t fd;
        h2o_linklist_unlink(&c->goaway_link);
        /* h2o writes whole frames per uv_write: with nothing queued in libuv the wire is at a frame
         * boundary, and one 17-byte frame fits any socket buffer that is not full */
        if (c->tcp.write_queue_size == 0 && uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0) {
            static const uint8_t goaway[] = {0,    0,    8,    7,    0, 0, 0, 0, 0, /* GOAWAY, stream 0, 8 bytes */
                                             0x7f, 0xff, 0xff, 0xff,                /* last stream id: h2o's is not exposed */
                                             0,    0,    0,    0x0b};               /* ENHANCE_YOUR_CALM */
            ssize_t n = send(fd, goaway, sizeof(goaway), MSG_DONTWAIT | MSG_NOSIGNAL);
            (void)n;
        }
        conn_shutdown(c);
    }
}

void aor_server_conn_account(struct aor_client_conn *c, int reset, int h2)
{
    if (c == NULL)
        return;
    if (h2)
        c->h2 = 1;
    if (!reset) {
        ++c->completed;
        return;
    }
    if (++c->resets <= AOR_CONN_RESET_BUDGET + c->completed || c->closing)
        return;
    c->closing = 1;
    AOR_LOG(AOR_LOG_WARN, "server", "closing a client connection: %u requests abandoned, %u completed (reset budget)", c->resets,
            c->completed);
    aor_metrics_conn_reset_closed();
    if (c->h2 && c->sock != NULL && c->sock->ssl == NULL) {
        /* not from inside h2o's frame processing: at the next iteration, before any read */
        h2o_linklist_insert(&c->worker->goaways, &c->goaway_link);
        if (!uv_is_active((uv_handle_t *)&c->worker->goaway_timer))
            uv_timer_start(&c->worker->goaway_timer, on_goaway_timer, 0, 0);
        return;
    }
    conn_shutdown(c);
}

/* ---- the header-block guard ----------------------------------------------------------
 * h2o 2.2.5 decodes an HTTP/2 header block into one h2o_header_t per field (an HPACK-indexed
 * field costs the client one byte) and keeps the list while the stream waits for its body; the
 * handler, which checks max_header_count/max_header_bytes, runs only once the body is complete,
 * so 100 streams that never send it held ~140 MB per connection (~4 GB with CONTINUATION
 * frames). h2o's read callback is therefore wrapped: the HTTP/2 frames in sock->input are
 * scanned before h2o reads them, and a header block (HEADERS + CONTINUATION) of more than
 * HBLOCK_MAX_FIELDS fields or HBLOCK_MAX_BYTES wire bytes closes the connection (the read
 * fails). Below that the handler's JSON 431 answers. The scan counts HPACK representations
 * without decoding them. h2o consumes whole frames only, so sock->input always starts at a
 * frame boundary; scan_off is how far into it the scan has gone.
 */
#define HBLOCK_MAX_FIELDS(conf) (2 * (size_t)(conf)->limits.max_header_count + 16)
#define HBLOCK_MAX_BYTES(conf) (2 * (size_t)(conf)->limits.max_header_bytes + 16 * (size_t)(conf)->limits.max_header_count)

enum { HP_FIRST, HP_INT, HP_LEN, HP_LEN_CONT, HP_SKIP };

/* one fragment of the open block: 0, or -1 when the block is over the limits */
static int hblock_scan(struct aor_client_conn *c, const struct aor_config *conf, const uint8_t *p, size_t len)
{
    const uint8_t *end = p + len;

    if ((c->block_bytes += len) > HBLOCK_MAX_BYTES(conf))
        return -1;
    while (p != end) {
        uint8_t b = *p;
        switch (c->hp_state) {
        case HP_FIRST: /* hp_next: the strings that follow the representation's integer */
            ++p;
            if ((b & 0xe0) == 0x20) { /* dynamic table size update: no field */
                c->hp_next = 0;
                c->hp_state = (b & 0x1f) == 0x1f ? HP_INT : HP_FIRST;
                continue;
            }
            if (++c->block_fields > HBLOCK_MAX_FIELDS(conf))
                return -1;
            if (b & 0x80) { /* indexed */
                c->hp_next = 0;
                c->hp_state = (b & 0x7f) == 0x7f ? HP_INT : HP_FIRST;
            } else { /* a literal: new name (index 0) or indexed name, then the value */
                unsigned idx = (b & 0xc0) == 0x40 ? (b & 0x3fu) : (b & 0x0fu), max = (b & 0xc0) == 0x40 ? 0x3f : 0x0f;
                c->hp_next = idx == 0 ? 2 : 1;
                c->hp_state = idx == max ? HP_INT : HP_LEN;
            }
            break;
        case HP_INT:
            ++p;
            if ((b & 0x80) == 0)
                c->hp_state = c->hp_next != 0 ? HP_LEN : HP_FIRST;
            break;
        case HP_LEN:
            ++p;
            c->hp_skip = b & 0x7f;
            c->hp_shift = 0;
            c->hp_state = c->hp_skip == 0x7f ? HP_LEN_CONT : HP_SKIP;
            break;
        case HP_LEN_CONT:
            ++p;
            c->hp_skip += (uint64_t)(b & 0x7f) << c->hp_shift;
            if ((c->hp_shift += 7) > 28 || c->hp_skip > HBLOCK_MAX_BYTES(conf))
                return -1;
            if ((b & 0x80) == 0)
                c->hp_state = HP_SKIP;
            break;
        case HP_SKIP: {
            size_t n = (size_t)(end - p) < c->hp_skip ? (size_t)(end - p) : (size_t)c->hp_skip;
            p += n;
            c->hp_skip -= n;
            break;
        }
        }
        if (c->hp_state == HP_SKIP && c->hp_skip == 0) /* a string ended */
            c->hp_state = --c->hp_next != 0 ? HP_LEN : HP_FIRST;
    }
    return 0;
}

/* scans the complete frames of sock->input not scanned yet: 0, or -1 when a block is over the limits */
static int hblock_frames(struct aor_client_conn *c, const struct aor_config *conf)
{
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const uint8_t *buf = (const uint8_t *)c->sock->input->bytes;
    size_t size = c->sock->input->size;

    if (size == 0)
        return 0;
    if (c->mode == 0 || c->mode == 3) { /* prior knowledge and TLS (ALPN h2) both start with the preface */
        size_t n = size < sizeof(preface) - 1 ? size : sizeof(preface) - 1;
        if (memcmp(buf, preface, n) != 0) {
            c->scan_off = 0; /* after an h2c upgrade h2o may have read the preface already */
            if ((c->mode = c->mode == 0 ? 2 : 1) == 2)
                c->h1_read = c->h2o_read;
        } else if (n == sizeof(preface) - 1) {
            c->mode = 1, c->scan_off = n;
        }
    }
    while (c->mode == 1 && size >= c->scan_off + 9) {
        const uint8_t *f = buf + c->scan_off;
        size_t flen = (size_t)f[0] << 16 | (size_t)f[1] << 8 | f[2];
        uint8_t type = f[3], flags = f[4];
        if (size - c->scan_off - 9 < flen)
            break;
        if (type == 1 /* HEADERS */ || (type == 9 /* CONTINUATION */ && c->in_block)) {
            const uint8_t *p = f + 9;
            size_t plen = flen;
            if (type == 1) {
                c->block_fields = c->block_bytes = 0;
                c->hp_state = HP_FIRST;
                if ((flags & 0x8) != 0) /* PADDED (a bad pad length is h2o's protocol error) */
                    plen = plen == 0 || p[0] >= plen ? 0 : plen - 1 - p[0], ++p;
                if ((flags & 0x20) != 0) /* PRIORITY */
                    plen = plen < 5 ? 0 : plen - 5, p += 5;
            }
            c->in_block = (flags & 0x4) == 0; /* END_HEADERS */
            if (hblock_scan(c, conf, p, plen) != 0)
                return -1;
        }
        c->scan_off += 9 + flen;
    }
    return 0;
}

static void hblock_on_read(h2o_socket_t *sock, const char *err);

/* (re)wraps h2o's read callback: h2o sets its own whenever it starts reading (HTTP/2 accepted,
 * TLS handshake done, reading resumed); 1 when it did */
static int hblock_wrap(struct aor_client_conn *c)
{
    if (c->sock == NULL || c->sock->_cb.read == NULL || c->sock->_cb.read == hblock_on_read)
        return 0;
    c->h2o_read = c->sock->_cb.read;
    c->sock->_cb.read = hblock_on_read;
    if (c->mode == 2 && c->h2o_read != c->h1_read)
        c->mode = 3; /* an HTTP/1.1 connection upgraded to h2c */
    return 1;
}

/* h2o ends a TLS handshake in a write callback and starts reading with its own callback there,
 * outside ours: until the connection's first application data is scanned, the check phase (after
 * the poll phase, before the next one reads) wraps it again. ALPN h2 may have had its preface
 * read already: mode 3 */
static void on_settle_check(uv_check_t *h)
{
    struct aor_worker *w = H2O_STRUCT_FROM_MEMBER(struct aor_worker, settle_check, h);
    h2o_linklist_t *l, *next;

    for (l = w->unsettled.next; l != &w->unsettled; l = next) {
        struct aor_client_conn *c = H2O_STRUCT_FROM_MEMBER(struct aor_client_conn, settle_link, l);
        next = l->next;
        if (!uv_is_closing((uv_handle_t *)&c->tcp) && hblock_wrap(c) && c->mode == 0 &&
            h2o_memis(h2o_socket_ssl_get_selected_protocol(c->sock).base, h2o_socket_ssl_get_selected_protocol(c->sock).len,
                      H2O_STRLIT("h2")))
            c->mode = 3;
        if (c->mode == 1 || c->mode == 2 || uv_is_closing((uv_handle_t *)&c->tcp))
            h2o_linklist_unlink(&c->settle_link);
    }
    if (h2o_linklist_is_empty(&w->unsettled))
        uv_check_stop(h);
}

void aor_server_conn_guard(struct aor_client_conn *c)
{
    /* h2o started reading outside our callback (an h2c upgrade, reading resumed): whatever it read
     * meanwhile it consumed in whole frames, so the input starts at a frame boundary */
    if (c != NULL && !uv_is_closing((uv_handle_t *)&c->tcp) && hblock_wrap(c) && c->mode == 1)
        c->scan_off = 0, c->in_block = 0;
}

static void hblock_on_read(h2o_socket_t *sock, const char *err)
{
    struct aor_client_conn *c = (struct aor_client_conn *)((struct uv_socket_layout *)sock)->uv.stream;
    size_t before;

    if (err == NULL && hblock_frames(c, c->worker->conf) != 0) {
        AOR_LOG(AOR_LOG_WARN, "server", "closing a client connection: an HTTP/2 header block over %zu fields or %zu bytes",
                HBLOCK_MAX_FIELDS(c->worker->conf), HBLOCK_MAX_BYTES(c->worker->conf));
        c->closing = 1;
        err = "header block over the limits"; /* h2o closes the connection without reading on */
    }
    before = sock->input->size;
    c->h2o_read(sock, err);
    if (uv_is_closing((uv_handle_t *)&c->tcp))
        return;
    /* h2o consumed whole frames from the front of the input */
    if (sock->input->size <= before && before - sock->input->size <= c->scan_off) {
        c->scan_off -= before - sock->input->size;
    } else { /* not what we scanned (cannot happen while we wrap every read): start afresh at h2o's frame boundary */
        c->scan_off = 0;
        c->in_block = 0;
    }
    hblock_wrap(c);
}

static void on_accept_timer(uv_timer_t *t);

/*
 * Descriptors: the soft RLIMIT_NOFILE is raised to the hard one; then client connections are held
 * back (like limits.max_connections) where the rest would be needed by the fixed descriptors and a
 * margin for upstream and Redis connections. Running out makes accept() fail with EMFILE, which
 * libuv 1.44 retries without returning to its loop once its reserve descriptor went to another
 * thread: the workers spin, serve nothing and never stop, even after the clients left.
 */
static void fit_descriptors(const struct aor_config *conf, size_t n_listens, size_t n_workers)
{
    struct rlimit rl;
    rlim_t fixed, cap;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        struct rlimit up = {rl.rlim_max < (rlim_t)1 << 20 ? rl.rlim_max : (rlim_t)1 << 20, rl.rlim_max};
        if (up.rlim_cur > rl.rlim_cur && setrlimit(RLIMIT_NOFILE, &up) == 0)
            rl.rlim_cur = up.rlim_cur;
    }
    fixed = AOR_FD_MARGIN + (rlim_t)n_workers * (16 + n_listens) + (conf->metrics.enabled ? AOR_METRICS_MAX_CONNECTIONS : 0);
    cap = rl.rlim_cur > fixed + 16 ? rl.rlim_cur - fixed : 16;
    if (cap >= conf->limits.max_connections)
        return;
    fd_conn_cap = (unsigned)cap;
    AOR_LOG(AOR_LOG_WARN, "server",
            "limits.max_connections %u needs more descriptors than RLIMIT_NOFILE %llu gives: at most %u client connections "
            "at once (raise it: LimitNOFILE= in the unit, ulimit -n)",
            conf->limits.max_connections, (unsigned long long)rl.rlim_cur, fd_conn_cap);
}

static int conn_cap_reached(struct aor_worker *w)
{
    unsigned cap = w->conf->limits.max_connections < fd_conn_cap ? w->conf->limits.max_connections : fd_conn_cap;
    return __atomic_load_n(&client_conns, __ATOMIC_RELAXED) >= cap;
}

/* accepts the connection libuv holds for `listener`; 0, or -1 to hold it (at the cap) */
static int accept_one(uv_stream_t *listener, size_t index)
{
    struct aor_worker *w = worker_of_listener(listener);
    h2o_accept_ctx_t *actx = listener->data;
    /* the metrics listener is the last one, when opened at start (w->conf may be a reload's, whose
     * listen list is not what was opened) */
    int metrics = metrics_port != 0 && index + 1 == w->num_listeners, counted = !metrics;
    struct aor_client_conn *c;
    h2o_socket_t *sock;

    /* the metrics listener has a cap of its own: never held back by the data plane's, and its
     * connections (reachable from anywhere on its network) cannot take the process's descriptors.
     * Its slot is taken before the check (two workers never both take the last one) */
    if (metrics ? __atomic_add_fetch(&metrics_conns, 1, __ATOMIC_RELAXED) > AOR_METRICS_MAX_CONNECTIONS : conn_cap_reached(w)) {
        if (metrics)
            __atomic_fetch_sub(&metrics_conns, 1, __ATOMIC_RELAXED);
        /* not calling uv_accept makes libuv keep this one and stop polling the listener; the
         * rest wait in the kernel's accept queue */
        w->paused[index] = 1;
        if (!uv_is_active((uv_handle_t *)&w->accept_timer))
            uv_timer_start(&w->accept_timer, on_accept_timer, 20, 20);
        return -1;
    }
    w->paused[index] = 0;
    c = h2o_mem_alloc(sizeof(*c));
    memset(c, 0, sizeof(*c));
    uv_tcp_init(listener->loop, &c->tcp);
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
        if (metrics)
            __atomic_fetch_sub(&metrics_conns, 1, __ATOMIC_RELAXED);
        uv_close((uv_handle_t *)&c->tcp, (uv_close_cb)free);
        return 0;
    }
    c->worker = w;
    c->counted = counted;
    c->metrics = metrics;
    if (counted)
        __atomic_fetch_add(&client_conns, 1, __ATOMIC_RELAXED);
    h2o_linklist_insert(&w->conns, &c->link);
    uv_tcp_nodelay(&c->tcp, 1);
    sock = h2o_uv_socket_create((uv_stream_t *)&c->tcp, on_conn_closed);
    /* not the layout we know: the connection runs without a reset budget */
    c->sock = ((struct uv_socket_layout *)sock)->uv.stream == (uv_stream_t *)&c->tcp ? sock : NULL;
    h2o_accept(actx, sock);
    if (c->sock != NULL)
        hblock_wrap(c);
    if (c->sock != NULL && c->sock->ssl != NULL) {
        h2o_linklist_insert(&w->unsettled, &c->settle_link);
        if (!uv_is_active((uv_handle_t *)&w->settle_check))
            uv_check_start(&w->settle_check, on_settle_check);
    }
    return 0;
}

static void on_accept(uv_stream_t *listener, int status)
{
    struct aor_worker *w = worker_of_listener(listener);

    if (status != 0 || w->shutting_down)
        return;
    accept_one(listener, (size_t)((uv_tcp_t *)listener - w->listeners));
}

/* while a listener is held back: is there room again? */
static void on_accept_timer(uv_timer_t *t)
{
    struct aor_worker *w = H2O_STRUCT_FROM_MEMBER(struct aor_worker, accept_timer, t);
    int any = 0;
    size_t i;

    for (i = 0; i != w->num_listeners; ++i) {
        if (!w->paused[i] || w->shutting_down)
            continue;
        if (accept_one((uv_stream_t *)&w->listeners[i], i) != 0)
            any = 1;
    }
    if (!any)
        uv_timer_stop(t);
}

/* ---- h2o's own 413 as the SPEC's JSON --------------------------------------------------
 * HTTP/1.1 bodies over max_request_entity_size never reach the handler: h2o answers them
 * itself with a plain-text 413 through the host's fallback path. This filter, registered on
 * that path only, turns that answer into the SPEC §4 error. (HTTP/2 bodies over the limit are
 * refused by h2o 2.2.5 with RST_STREAM(REFUSED_STREAM) and no response at all.) */

static const char json413[] = "{\"error\":{\"code\":\"body_too_large\",\"message\":\"request body exceeds max_body_bytes\"}}\n";

static void json413_do_send(h2o_ostream_t *self, h2o_req_t *req, h2o_iovec_t *bufs, size_t bufcnt, h2o_send_state_t state)
{
    h2o_iovec_t body = h2o_iovec_init(json413, sizeof(json413) - 1);

    (void)bufs;
    (void)bufcnt;
    h2o_ostream_send_next(self, req, &body, 1, state);
}

static void json413_on_setup_ostream(h2o_filter_t *self, h2o_req_t *req, h2o_ostream_t **slot)
{
    if (req->res.status == 413) {
        h2o_ostream_t *o = h2o_add_ostream(req, sizeof(*o), slot);
        o->do_send = json413_do_send;
        slot = &o->next;
        memset(&req->res.headers, 0, sizeof(req->res.headers));
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("application/json"));
        req->res.content_length = sizeof(json413) - 1;
        req->res.reason = "Payload Too Large";
    }
    h2o_setup_next_ostream(req, slot);
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
    uv_timer_stop(&w->accept_timer);
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

/* redis.auth of `conf` for aor_redis_create/reconfigure: NULL without it */
static const struct aor_redis_entra *redis_entra(struct aor_worker *w, const struct aor_config *conf, struct aor_redis_entra *out)
{
    if (conf->redis.cred.type == AOR_CRED_NONE || conf->redis.object_id == NULL)
        return NULL;
    out->cred = &conf->redis.cred;
    out->object_id = conf->redis.object_id;
    out->waitq = w->cred_waitq;
    return out;
}

static void on_wake(uv_async_t *async)
{
    struct aor_worker *w = async->data;
    struct aor_redis_entra entra;

    pthread_mutex_lock(&gen_lock);
    if (w->seen_generation != generation) {
        struct aor_config *old = w->conf;
        w->conf = current_conf;
        aor_config_retain(w->conf);
        w->seen_generation = generation;
        aor_config_release(old); /* requests in flight still hold it */
    }
    pthread_mutex_unlock(&gen_lock);
    /* a changed `redis:` (URL, password rotation): the same client, reconnected with the new settings */
    if (w->redis != NULL && w->conf->redis.url != NULL && !w->shutting_down &&
        aor_redis_reconfigure(w->redis, w->conf->redis.url, w->conf->redis.password, w->conf->redis.ca_file,
                              redis_entra(w, w->conf, &entra)) != 0)
        AOR_LOG(AOR_LOG_ERROR, "server", "worker %u: cannot apply the new redis settings; the old ones stay", w->id);
    if (shutdown_requested && !w->shutting_down)
        begin_shutdown(w);
}

static void on_teardown_guard(uv_timer_t *t)
{
    *(int *)t->data = 1;
}

/* the loop has stopped: shut every client connection down and let h2o close them (their
 * requests disposed, key lookups cancelled) while all they use still exists — bounded */
static void close_client_conns(struct aor_worker *w)
{
    uv_timer_t guard;
    int expired = 0;
    h2o_linklist_t *l;

    w->tearing_down = 1;
    aor_admit_teardown(w);
    uv_timer_stop(&w->accept_timer);
    for (l = w->conns.next; l != &w->conns; l = l->next) {
        struct aor_client_conn *c = H2O_STRUCT_FROM_MEMBER(struct aor_client_conn, link, l);
        uv_os_fd_t fd;
        c->closing = 1;
        if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
            shutdown(fd, SHUT_RDWR);
    }
    uv_timer_init(&w->loop, &guard);
    guard.data = &expired;
    uv_timer_start(&guard, on_teardown_guard, 2000, 0);
    while (!h2o_linklist_is_empty(&w->conns) && !expired)
        uv_run(&w->loop, UV_RUN_ONCE);
    if (!h2o_linklist_is_empty(&w->conns))
        AOR_LOG(AOR_LOG_WARN, "server", "worker %u: client connections still open after 2 s of teardown", w->id);
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(&w->loop, UV_RUN_NOWAIT);
}

static void *worker_main(void *arg)
{
    struct aor_worker *w = arg;

    uv_run(&w->loop, UV_RUN_DEFAULT);

    /* tear down in order: client connections (and so their requests) first, then what they used */
    close_client_conns(w);
    aor_accesslog_destroy(w->accesslog);
    if (w->id == 0) {
        aor_keystores_stop();
        aor_creds_stop();
    }
    aor_apikeys_destroy(w->apikeys);
    aor_coolshare_stop(w);
    aor_deftenant_stop(w);
    aor_admit_worker_stop(w);
    aor_redis_destroy(w->redis); /* before the wait queue it watches */
    aor_cred_waitq_close(w->cred_waitq);
    w->cred_waitq = NULL;
    aor_tokencache_destroy(w->tokens);
    uv_run(&w->loop, UV_RUN_NOWAIT);
    aor_upstream_destroy(w->upstream);
    aor_upstream_h1_close(w->upstream_h1);
    uv_close((uv_handle_t *)&w->wake, NULL);
    uv_close((uv_handle_t *)&w->accept_timer, NULL);
    uv_close((uv_handle_t *)&w->goaway_timer, NULL);
    uv_close((uv_handle_t *)&w->defer_check, NULL);
    uv_close((uv_handle_t *)&w->settle_check, NULL);
    uv_close((uv_handle_t *)&w->defer_idle, NULL);
    if (w->drain_timer.loop != NULL) /* initialised by begin_shutdown */
        uv_close((uv_handle_t *)&w->drain_timer, NULL);
    uv_run(&w->loop, UV_RUN_NOWAIT); /* runs the close callbacks */
    aor_upstream_h1_free(w->upstream_h1);
    w->upstream_h1 = NULL;
    aor_config_release(w->conf);
    w->conf = NULL;
    free(w->listeners);
    free(w->accept_ctxs);
    free(w->paused);
    return NULL;
}

static int start_worker(struct aor_worker *w, unsigned id, const int *fds)
{
    const struct aor_config *conf = w->conf;
    struct aor_redis_entra entra;
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
    /* the wait queue first: a Redis with redis.auth watches it for its tokens */
    if ((w->cred_waitq = aor_cred_waitq_create(&w->loop)) == NULL)
        return -1;
    if (conf->redis.url != NULL &&
        (w->redis = aor_redis_create(&w->loop, conf->redis.url, conf->redis.password, conf->redis.ca_file,
                                     redis_entra(w, conf, &entra), REDIS_COMMAND_TIMEOUT_MS)) == NULL)
        return -1;
    if ((w->apikeys = aor_apikeys_create(w->redis, AOR_APIKEY_CACHE_DEFAULT)) == NULL || aor_coolshare_start(w) != 0 ||
        aor_deftenant_start(w) != 0 || aor_admit_worker_start(w) != 0)
        return -1;
    /* worker 0's loop also fetches the issuers' keys (OIDC discovery, JWKS) */
    if (id == 0 && aor_keystores_start(&w->loop, w->upstream) != 0)
        return -1;
    /* ... and the backends' access tokens (managed identity, workload identity, Entra ID) */
    if (id == 0 && aor_creds_start(&w->loop, w->upstream) != 0)
        return -1;
    uv_async_init(&w->loop, &w->wake, on_wake);
    w->wake.data = w;
    h2o_linklist_init_anchor(&w->conns);
    h2o_linklist_init_anchor(&w->deferred);
    h2o_linklist_init_anchor(&w->goaways);
    uv_timer_init(&w->loop, &w->goaway_timer);
    uv_timer_init(&w->loop, &w->accept_timer);
    uv_check_init(&w->loop, &w->defer_check);
    uv_check_init(&w->loop, &w->settle_check);
    h2o_linklist_init_anchor(&w->unsettled);
    uv_idle_init(&w->loop, &w->defer_idle);
    w->num_listeners = num_listens;
    w->listeners = calloc(w->num_listeners, sizeof(*w->listeners));
    w->accept_ctxs = calloc(w->num_listeners, sizeof(*w->accept_ctxs));
    w->paused = calloc(w->num_listeners, 1);
    if (w->listeners == NULL || w->accept_ctxs == NULL || w->paused == NULL)
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
    conf->loaded_at_ms = aor_now_ms();
    aor_metrics_set_max_tenants(conf->metrics.max_tenants);
    if (aor_backend_attach(conf, aor_now_ms()) != 0 || aor_creds_attach(conf) != 0)
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
    if (next->metrics.enabled != current_conf->metrics.enabled || next->metrics.port != current_conf->metrics.port ||
        (next->metrics.address != NULL && current_conf->metrics.address != NULL &&
         strcmp(next->metrics.address, current_conf->metrics.address) != 0))
        AOR_LOG(AOR_LOG_WARN, "server", "the metrics listener (metrics: address/port) changes only after a restart");
    if (next->limits.max_streams_per_connection != current_conf->limits.max_streams_per_connection)
        AOR_LOG(AOR_LOG_WARN, "server", "limits.max_streams_per_connection takes effect only after a restart");
    if ((next->redis.url == NULL) != (current_conf->redis.url == NULL))
        AOR_LOG(AOR_LOG_WARN, "server",
                "adding or removing `redis:` takes effect only after a restart (a changed URL or password applies now)");
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

    aor_status_started(aor_now_ms());
    if (path == NULL || attach_runtime(conf) != 0)
        goto exit;
    current_conf = conf;
    aor_log_set_nonblocking(1); /* a stalled log reader drops lines, never stops a worker */
    curl_global_init(CURL_GLOBAL_DEFAULT);

    h2o_config_init(&globalconf);
    globalconf.server_name = h2o_iovec_init(H2O_STRLIT("aoai-router"));
    /* h2o buffers a whole body before the handler: never more than max_body_bytes (+64 KiB, so
     * that an HTTP/2 body a little over still reaches the handler and gets the JSON 413). Over
     * it, HTTP/1.1 gets h2o's 413 (made JSON by the filter below), HTTP/2 a RST_STREAM */
    globalconf.max_request_entity_size = conf->limits.max_body_bytes + AOR_BODY_SLACK;
    globalconf.http2.max_concurrent_requests_per_connection = conf->limits.max_streams_per_connection;
    hostconf = h2o_config_register_host(&globalconf, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    pathconf = h2o_config_register_path(hostconf, "/", 0);
    handler = h2o_create_handler(pathconf, sizeof(*handler));
    handler->on_req = aor_pipeline_on_req;
    h2o_create_filter(&hostconf->fallback_path, sizeof(h2o_filter_t))->on_setup_ostream = json413_on_setup_ostream;

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
        metrics_port = conf->metrics.port;
    }
    ssl_ctxs = calloc(num_listens, sizeof(*ssl_ctxs));
    num_workers = conf->threads != 0 ? conf->threads : 1;
    fit_descriptors(conf, num_listens, num_workers);
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
    aor_admit_report_unwritten();
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
    aor_creds_free();
    aor_metrics_free();
    curl_global_cleanup();
    free(fds);
    free(path);
    aor_log_set_nonblocking(0);
    return ret;
}
