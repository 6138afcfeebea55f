/*
 * h2o_client.c — the same closed-loop load as curl_client.c, through h2o 2.2.5's own
 * HTTP/1.1 client (h2o_http1client_connect_with_pool) and a keep-alive socket pool
 * (h2o_socketpool_t) on one libuv loop: what h2o's reverse proxy (lib/core/proxy.c) uses.
 *
 * Each request has the production shape: the request head is written per request (it would
 * carry forwarded client headers and a request id), a total deadline is armed per request
 * (h2o_timeout_t; http1client only has a per-phase I/O timeout), every response header is
 * looked at, the body is consumed as it arrives.
 *
 * A finished request's slot is restarted from a uv_check callback, not from inside on_body:
 * http1client returns the socket to the pool only after on_body returns, so a connect issued
 * from on_body would never find a pooled connection.
 *
 * Functional probes (one request):
 *   --stream --pause-ms M   stop reading the socket for M ms after the first body chunk
 *                           (h2o_socket_read_stop, then read_start with the reader saved from
 *                           sock->_cb.read) — see README.md for what this proves
 *   --tls --host NAME [--connect ADDR] [--cafile F] [--verify-param] [--tls-max 1.2|1.3]
 *                           https with SSL_VERIFY_PEER; --verify-param also sets the host name on
 *                           the SSL_CTX's X509_VERIFY_PARAM so that OpenSSL checks it itself
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <getopt.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <h2o.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <uv.h>
#include "common.h"

#define MAX_CONC 4096

struct client;

struct slot {
    struct client *c;
    h2o_http1client_t *hc; /* NULL when no request is in flight */
    char head[512];
    h2o_iovec_t reqbufs[2];
    h2o_timeout_entry_t deadline; /* total timeout of the request */
    h2o_linklist_t restart_link;  /* in client.restart when waiting for the check phase */
    size_t body_bytes;
    int status;
};

struct client {
    uv_loop_t *loop;
    h2o_socketpool_t pool;
    h2o_http1client_ctx_t ctx;
    h2o_timeout_t io_timeout, total_timeout;
    h2o_multithread_queue_t *queue;
    h2o_multithread_receiver_t getaddr_receiver;
    SSL_CTX *ssl_ctx;
    uv_timer_t run_timer;
    uv_check_t check;
    h2o_linklist_t restart;
    struct cc_meter meter;
    /* options */
    const char *host, *connect_addr, *cafile, *tls_max;
    int port, conc, tls, verify_param, stream, named;
    long pause_ms, io_timeout_ms, total_timeout_ms;
    double warm_secs, secs;
    uint64_t warm_reqs, count;
    /* state */
    uint64_t started, done, errors, reqid, t_start;
    int stopping;
    char authority[300];
    size_t authority_len;
    size_t header_bytes_seen; /* written so that looking at the headers is not optimised away */
    /* --pause-ms probe */
    uv_timer_t pause_timer;
    h2o_socket_t *paused_sock;
    h2o_socket_cb paused_reader;
    int paused_once;
    size_t bytes_at_pause;
    uint64_t pause_t0, pause_t1;
};

static int start_one(struct client *c, struct slot *s);

/* ---- run control ---------------------------------------------------------------------- */

static void stop(struct client *c)
{
    if (c->meter.running)
        cc_meter_end(&c->meter, c->done, c->errors);
    c->stopping = 1;
    uv_stop(c->loop);
}

static void on_run_timer(uv_timer_t *t)
{
    struct client *c = t->data;

    if (!c->meter.running && !c->meter.finished) {
        cc_meter_begin(&c->meter, c->done, c->errors);
        uv_timer_start(&c->run_timer, on_run_timer, (uint64_t)(c->secs * 1000), 0);
        return;
    }
    stop(c);
}

static int want_more(struct client *c)
{
    if (c->stopping)
        return 0;
    if (c->count != 0 && c->started >= c->warm_reqs + c->count)
        return 0;
    return 1;
}

/* a request is over: http1client frees s->hc once the callback we are in returns, or we cancelled it */
static void finish_one(struct client *c, struct slot *s, const char *errstr)
{
    if (h2o_timeout_is_linked(&s->deadline))
        h2o_timeout_unlink(&s->deadline);
    s->hc = NULL;
    if (errstr != NULL || s->status != 200) {
        ++c->errors;
        if (c->errors <= 5)
            fprintf(stderr, "h2o_client: request failed: %s, status %d\n", errstr != NULL ? errstr : "-", s->status);
    }
    ++c->done;
    if (c->pause_ms > 0 || c->count == 1)
        fprintf(stderr, "h2o_client: status %d, %zu body bytes, result %s, after %.0f ms\n", s->status, s->body_bytes,
                errstr != NULL ? errstr : "ok", (cc_now_us() - c->t_start) / 1000.0);
    if (c->count != 0) {
        if (!c->meter.running && !c->meter.finished && c->done >= c->warm_reqs)
            cc_meter_begin(&c->meter, c->done, c->errors);
        if (c->meter.running && c->done - c->meter.done0 >= c->count) {
            stop(c);
            return;
        }
    }
    if (want_more(c))
        h2o_linklist_insert(&c->restart, &s->restart_link);
}

/* check phase: every callback of this loop iteration has returned, so finished sockets are back in the pool */
static void on_check(uv_check_t *check)
{
    struct client *c = check->data;
    h2o_linklist_t batch;

    /* a start that fails synchronously queues its slot again; that one waits for the next iteration */
    h2o_linklist_init_anchor(&batch);
    h2o_linklist_insert_list(&batch, &c->restart);
    while (!h2o_linklist_is_empty(&batch)) {
        struct slot *s = H2O_STRUCT_FROM_MEMBER(struct slot, restart_link, batch.next);
        h2o_linklist_unlink(&s->restart_link);
        if (want_more(c) && start_one(c, s) != 0) {
            fprintf(stderr, "h2o_client: cannot start a request\n");
            stop(c);
        }
    }
}

/* ---- one request ---------------------------------------------------------------------- */

static void on_pause_timer(uv_timer_t *t)
{
    struct client *c = t->data;

    c->pause_t1 = cc_now_us();
    if (c->paused_sock != NULL)
        h2o_socket_read_start(c->paused_sock, c->paused_reader);
}

static int on_body(h2o_http1client_t *hc, const char *errstr)
{
    struct slot *s = hc->data;
    struct client *c = s->c;
    h2o_buffer_t **input = &hc->sock->input;

    /* the bytes of this callback are in sock->input; a proxy would hand them to its client */
    s->body_bytes += (*input)->size;
    h2o_buffer_consume(input, (*input)->size);
    if (errstr != NULL) {
        /* end of stream or error: http1client frees hc (and pools or closes the socket) after we return */
        c->paused_sock = NULL;
        finish_one(c, s, errstr == h2o_http1client_error_is_eos ? NULL : errstr);
        return 0;
    }
    if (c->pause_ms > 0 && !c->paused_once && s->body_bytes != 0) {
        /* http1client has no pause API; its reader is static, so take it from the socket */
        c->paused_once = 1;
        c->bytes_at_pause = s->body_bytes;
        c->paused_sock = hc->sock;
        c->paused_reader = hc->sock->_cb.read;
        h2o_socket_read_stop(hc->sock);
        c->pause_t0 = cc_now_us();
        uv_timer_start(&c->pause_timer, on_pause_timer, (uint64_t)c->pause_ms, 0);
    }
    return 0;
}

static h2o_http1client_body_cb on_head(h2o_http1client_t *hc, const char *errstr, int minor_version, int status, h2o_iovec_t msg,
                                       h2o_header_t *headers, size_t num_headers, int rlen)
{
    struct slot *s = hc->data;
    size_t i;

    (void)minor_version;
    (void)msg;
    (void)rlen;
    if (errstr != NULL && errstr != h2o_http1client_error_is_eos) {
        finish_one(s->c, s, errstr);
        return NULL;
    }
    s->status = status;
    /* a proxy looks at every header (the curl client's header callback does the same) */
    for (i = 0; i != num_headers; ++i)
        s->c->header_bytes_seen += headers[i].name->len + headers[i].value.len;
    if (errstr == h2o_http1client_error_is_eos) {
        finish_one(s->c, s, NULL);
        return NULL;
    }
    return on_body;
}

static h2o_http1client_head_cb on_connect(h2o_http1client_t *hc, const char *errstr, h2o_iovec_t **reqbufs, size_t *reqbufcnt,
                                          int *method_is_head)
{
    struct slot *s = hc->data;

    if (errstr != NULL) {
        finish_one(s->c, s, errstr);
        return NULL;
    }
    *reqbufs = s->reqbufs;
    *reqbufcnt = 2;
    *method_is_head = 0;
    return on_head;
}

static void on_deadline(h2o_timeout_entry_t *entry)
{
    struct slot *s = H2O_STRUCT_FROM_MEMBER(struct slot, deadline, entry);

    if (s->hc->sock != NULL && s->c->paused_sock == s->hc->sock)
        s->c->paused_sock = NULL; /* the socket goes away with the client */
    /* cancel calls no callback; it closes the connection (never pools it) and frees hc */
    h2o_http1client_cancel(s->hc);
    finish_one(s->c, s, "total timeout");
}

static char *append(char *p, const char *s, size_t len)
{
    memcpy(p, s, len);
    return p + len;
}

#define APPEND_LIT(p, lit) append((p), (lit), sizeof(lit) - 1)

static char *append_hex64(char *p, uint64_t v)
{
    static const char digits[] = "0123456789abcdef";
    int i;
    for (i = 15; i >= 0; --i, v >>= 4)
        p[i] = digits[v & 15];
    return p + 16;
}

static char *append_dec(char *p, size_t v)
{
    char tmp[24];
    size_t n = 0;
    do
        tmp[n++] = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    while (n != 0)
        *p++ = tmp[--n];
    return p;
}

static int start_one(struct client *c, struct slot *s)
{
    const char *body = c->stream ? CHAT_STREAM_BODY : CHAT_BODY;
    size_t body_len = strlen(body);
    char *p = s->head;

    /* the head a proxy composes per request (memcpy, no printf); the request id changes every time.
     * 512 bytes hold it: the fixed parts take about 230, the authority is capped at 200 */
    if (c->authority_len > 200)
        return -1;
    p = APPEND_LIT(p, "POST " CHAT_PATH " HTTP/1.1\r\nHost: ");
    p = append(p, c->authority, c->authority_len);
    p = APPEND_LIT(p, "\r\nContent-Length: ");
    p = append_dec(p, body_len);
    p = APPEND_LIT(p, "\r\nx-request-id: ");
    p = append_hex64(p, ++c->reqid);
    p = APPEND_LIT(p, "\r\nContent-Type: application/json\r\nUser-Agent: " BENCH_USER_AGENT "\r\napi-key: " BENCH_API_KEY
                      "\r\n\r\n");
    s->reqbufs[0] = h2o_iovec_init(s->head, (size_t)(p - s->head));
    s->reqbufs[1] = h2o_iovec_init(body, body_len);
    s->body_bytes = 0;
    s->status = 0;
    ++c->started;
    s->deadline.cb = on_deadline;
    h2o_timeout_link(c->loop, &c->total_timeout, &s->deadline);
    /* calls on_connect before returning when the pool hands over an idle socket; a new connection
     * calls it later. on_head always comes later (libuv completes writes asynchronously) */
    h2o_http1client_connect_with_pool(&s->hc, s, &c->ctx, &c->pool, on_connect);
    return 0;
}

/* ---- setup ---------------------------------------------------------------------------- */

static SSL_CTX *make_ssl_ctx(struct client *c)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

    if (ctx == NULL)
        return NULL;
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (c->cafile != NULL ? SSL_CTX_load_verify_locations(ctx, c->cafile, NULL) != 1 : SSL_CTX_set_default_verify_paths(ctx) != 1)
        goto fail;
    if (c->tls_max != NULL)
        SSL_CTX_set_max_proto_version(ctx, strcmp(c->tls_max, "1.2") == 0 ? TLS1_2_VERSION : TLS1_3_VERSION);
    if (c->verify_param) {
        /* OpenSSL checks the name during the handshake; one SSL_CTX per backend host name */
        X509_VERIFY_PARAM *param = SSL_CTX_get0_param(ctx);
        X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if (X509_VERIFY_PARAM_set1_host(param, c->host, 0) != 1)
            goto fail;
    }
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

static int init_pool(struct client *c)
{
    if (c->named) {
        /* the name is resolved by h2o's getaddrinfo thread at every new connection */
        h2o_socketpool_init_by_hostport(&c->pool, h2o_iovec_init(c->host, strlen(c->host)), (uint16_t)c->port, c->tls, SIZE_MAX);
    } else {
        struct sockaddr_in sin;
        memset(&sin, 0, sizeof(sin));
        sin.sin_family = AF_INET;
        sin.sin_port = htons((uint16_t)c->port);
        if (inet_pton(AF_INET, c->connect_addr != NULL ? c->connect_addr : c->host, &sin.sin_addr) != 1)
            return -1;
        h2o_socketpool_init_by_address(&c->pool, (struct sockaddr *)&sin, sizeof(sin), c->tls, SIZE_MAX);
        if (c->connect_addr != NULL) {
            /* a sockaddr pool uses peer.host for SNI and name verification (socketpool.h); make it the name */
            free(c->pool.peer.host.base);
            c->pool.peer.host = h2o_strdup(NULL, c->host, SIZE_MAX);
        }
    }
    /* idle pooled connections are closed after 2 s (the check runs once a second) */
    h2o_socketpool_set_timeout(&c->pool, c->loop, 2000);
    return 0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: h2o_client [-p PORT] [--host NAME] [--connect ADDR] [--named] [-c CONC] [-d SECS] [-w WARM_SECS]\n"
            "                  [-n COUNT] [-W WARM_REQS] [--io-timeout MS] [--total-timeout MS]\n"
            "                  [--tls] [--cafile FILE] [--verify-param] [--tls-max 1.2|1.3] [--stream] [--pause-ms MS]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static struct client cl;
    struct client *c = &cl;
    static struct slot slots[MAX_CONC];
    int i, opt;
    enum { O_HOST = 256, O_CONNECT, O_NAMED, O_IOT, O_TOT, O_TLS, O_CAFILE, O_VPARAM, O_TLSMAX, O_STREAM, O_PAUSE };
    static const struct option longopts[] = {
        {"host", required_argument, NULL, O_HOST},     {"connect", required_argument, NULL, O_CONNECT},
        {"named", no_argument, NULL, O_NAMED},         {"io-timeout", required_argument, NULL, O_IOT},
        {"total-timeout", required_argument, NULL, O_TOT}, {"tls", no_argument, NULL, O_TLS},
        {"cafile", required_argument, NULL, O_CAFILE}, {"verify-param", no_argument, NULL, O_VPARAM},
        {"tls-max", required_argument, NULL, O_TLSMAX}, {"stream", no_argument, NULL, O_STREAM},
        {"pause-ms", required_argument, NULL, O_PAUSE}, {NULL, 0, NULL, 0}};

    c->host = "127.0.0.1";
    c->port = 19101;
    c->conc = 64;
    c->secs = 10;
    c->warm_secs = 1;
    c->warm_reqs = 1000;
    c->io_timeout_ms = 30000;
    c->total_timeout_ms = 60000;
    while ((opt = getopt_long(argc, argv, "p:c:d:w:n:W:", longopts, NULL)) != -1) {
        switch (opt) {
        case 'p': c->port = atoi(optarg); break;
        case 'c': c->conc = atoi(optarg); break;
        case 'd': c->secs = atof(optarg); break;
        case 'w': c->warm_secs = atof(optarg); break;
        case 'n': c->count = strtoull(optarg, NULL, 10); break;
        case 'W': c->warm_reqs = strtoull(optarg, NULL, 10); break;
        case O_HOST: c->host = optarg; break;
        case O_CONNECT: c->connect_addr = optarg; break;
        case O_NAMED: c->named = 1; break;
        case O_IOT: c->io_timeout_ms = atol(optarg); break;
        case O_TOT: c->total_timeout_ms = atol(optarg); break;
        case O_TLS: c->tls = 1; break;
        case O_CAFILE: c->cafile = optarg; break;
        case O_VPARAM: c->verify_param = 1; break;
        case O_TLSMAX: c->tls_max = optarg; break;
        case O_STREAM: c->stream = 1; break;
        case O_PAUSE: c->pause_ms = atol(optarg); break;
        default: usage();
        }
    }
    if (c->conc < 1 || c->conc > MAX_CONC)
        usage();
    if (c->count == 1 || c->pause_ms > 0) {
        c->conc = 1;
        c->count = 1;
        c->warm_reqs = 0;
    }
    if (c->count == 0)
        c->warm_reqs = 0;
    c->authority_len = (size_t)snprintf(c->authority, sizeof(c->authority), "%s:%d", c->host, c->port);

    c->loop = uv_default_loop();
    h2o_timeout_init(c->loop, &c->io_timeout, (uint64_t)c->io_timeout_ms);
    h2o_timeout_init(c->loop, &c->total_timeout, (uint64_t)c->total_timeout_ms);
    c->queue = h2o_multithread_create_queue(c->loop);
    h2o_multithread_register_receiver(c->queue, &c->getaddr_receiver, h2o_hostinfo_getaddr_receiver);
    if (c->tls && (c->ssl_ctx = make_ssl_ctx(c)) == NULL) {
        fprintf(stderr, "h2o_client: cannot set up TLS\n");
        return 1;
    }
    if (init_pool(c) != 0) {
        fprintf(stderr, "h2o_client: bad address\n");
        return 2;
    }
    c->ctx = (h2o_http1client_ctx_t){c->loop, &c->getaddr_receiver, &c->io_timeout, NULL, c->ssl_ctx};
    h2o_linklist_init_anchor(&c->restart);
    uv_check_init(c->loop, &c->check);
    c->check.data = c;
    uv_check_start(&c->check, on_check);
    uv_timer_init(c->loop, &c->run_timer);
    c->run_timer.data = c;
    uv_timer_init(c->loop, &c->pause_timer);
    c->pause_timer.data = c;

    c->t_start = cc_now_us();
    for (i = 0; i != c->conc; ++i) {
        slots[i].c = c;
        if (start_one(c, &slots[i]) != 0) {
            fprintf(stderr, "h2o_client: cannot start a request\n");
            return 1;
        }
    }
    if (c->count == 0)
        uv_timer_start(&c->run_timer, on_run_timer, (uint64_t)(c->warm_secs * 1000), 0);
    else if (c->warm_reqs == 0)
        cc_meter_begin(&c->meter, 0, 0);
    uv_run(c->loop, UV_RUN_DEFAULT);

    if (c->meter.finished)
        cc_meter_report(&c->meter, "h2o", c->tls ? "http1client+pool,tls" : "http1client+pool", c->conc);
    if (c->pause_ms > 0 && c->pause_t1 != 0)
        fprintf(stderr, "h2o_client: paused at %zu bytes for %.1f ms, then resumed\n", c->bytes_at_pause,
                (c->pause_t1 - c->pause_t0) / 1000.0);
    else if (c->pause_ms > 0)
        fprintf(stderr, "h2o_client: paused at %zu bytes, never resumed: the request ended first\n", c->bytes_at_pause);
    /* requests still in flight are abandoned; the process exits */
    for (i = 0; i != c->conc; ++i)
        if (slots[i].hc != NULL) {
            h2o_http1client_cancel(slots[i].hc);
            slots[i].hc = NULL;
        }
    return c->errors != 0 && c->done == c->errors ? 1 : 0;
}
