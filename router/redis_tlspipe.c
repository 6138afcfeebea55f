/*
 * redis_tlspipe.c — see redis_tlspipe.h.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include "redis_tlspipe.h"

#define RELAY_BUF 16384
#define MAX_RELAYS 8

static pthread_mutex_t relays_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_t relays[MAX_RELAYS]; /* started and not joined yet */
static size_t num_relays;

struct relay {
    SSL_CTX *ctx;
    SSL *ssl;
    int tls_fd;  /* the TCP socket under `ssl` */
    int pair_fd; /* our end of the socket pair */
    unsigned timeout_ms;
};

static void set_timeouts(int fd, unsigned timeout_ms)
{
    struct timeval tv = {(time_t)(timeout_ms / 1000), (suseconds_t)(timeout_ms % 1000) * 1000};

    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

/* a TCP connection to host:port within timeout_ms, blocking afterwards; -1 with err */
static int tcp_connect(const char *host, uint16_t port, unsigned timeout_ms, char *err, size_t errlen)
{
    struct addrinfo hints, *res = NULL, *ai;
    char service[8];
    int fd = -1, rc;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(service, sizeof(service), "%u", (unsigned)port);
    if ((rc = getaddrinfo(host, service, &hints, &res)) != 0) {
        snprintf(err, errlen, "cannot resolve %s: %s", host, gai_strerror(rc));
        return -1;
    }
    snprintf(err, errlen, "no address for %s", host);
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        struct pollfd p;
        int soerr = 0;
        socklen_t len = sizeof(soerr);
        if ((fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol)) < 0)
            continue;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
            snprintf(err, errlen, "connect: %s", strerror(errno));
            goto next;
        }
        p.fd = fd;
        p.events = POLLOUT;
        if ((rc = poll(&p, 1, (int)timeout_ms)) <= 0) {
            snprintf(err, errlen, "connect: %s", rc == 0 ? "timed out" : strerror(errno));
            goto next;
        }
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0 || soerr != 0) {
            snprintf(err, errlen, "connect: %s", strerror(soerr != 0 ? soerr : errno));
            goto next;
        }
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
        set_timeouts(fd, timeout_ms);
        break;
    next:
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* waits until `fd` is ready for what `ssl` wants after `rc`; 0, or -1 when the connection is over */
static int ssl_wait(SSL *ssl, int fd, int rc, unsigned timeout_ms)
{
    int e = SSL_get_error(ssl, rc);
    struct pollfd p = {fd, 0, 0};

    if (e == SSL_ERROR_WANT_READ)
        p.events = POLLIN;
    else if (e == SSL_ERROR_WANT_WRITE)
        p.events = POLLOUT;
    else
        return -1;
    return poll(&p, 1, (int)timeout_ms) == 1 ? 0 : -1;
}

/*
 * The TLS socket is non-blocking here: a readable socket may carry only TLS records with no
 * application data (TLS 1.3 session tickets), after which SSL_read must not block while the
 * other direction waits.
 */
static void *relay_main(void *arg)
{
    struct relay *rl = arg;
    char buf[RELAY_BUF];

    fcntl(rl->tls_fd, F_SETFL, fcntl(rl->tls_fd, F_GETFL) | O_NONBLOCK);
    for (;;) {
        struct pollfd p[2] = {{rl->tls_fd, POLLIN, 0}, {rl->pair_fd, POLLIN, 0}};
        if (SSL_pending(rl->ssl) == 0 && poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (SSL_pending(rl->ssl) > 0 || (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
            int n = SSL_read(rl->ssl, buf, sizeof(buf));
            if (n > 0) {
                if (write_all(rl->pair_fd, buf, (size_t)n) != 0)
                    break;
            } else if (SSL_get_error(rl->ssl, n) != SSL_ERROR_WANT_READ) {
                break;
            }
        }
        if (p[1].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = read(rl->pair_fd, buf, sizeof(buf));
            int rc = 0;
            if (n <= 0)
                break;
            while ((rc = SSL_write(rl->ssl, buf, (int)n)) <= 0 && ssl_wait(rl->ssl, rl->tls_fd, rc, rl->timeout_ms) == 0)
                ;
            if (rc <= 0)
                break;
        }
    }
    /* either side is gone: closing ours ends the other (hiredis sees EOF) */
    close(rl->pair_fd);
    SSL_free(rl->ssl);
    SSL_CTX_free(rl->ctx);
    close(rl->tls_fd);
    free(rl);
    return NULL;
}

int aor_redis_tlspipe_open(const char *host, uint16_t port, const char *ca_file, unsigned timeout_ms, char *err, size_t errlen)
{
    struct relay *rl = calloc(1, sizeof(*rl));
    unsigned char ip[sizeof(struct in6_addr)];
    int is_ip = inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1, pair[2] = {-1, -1};
    X509_VERIFY_PARAM *param;
    pthread_t th;
    long vr;

    if (rl == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    rl->tls_fd = rl->pair_fd = -1;
    rl->timeout_ms = timeout_ms;
    if ((rl->ctx = SSL_CTX_new(TLS_client_method())) == NULL)
        goto ossl_fail;
    SSL_CTX_set_min_proto_version(rl->ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(rl->ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    if (SSL_CTX_set_default_verify_paths(rl->ctx) != 1) {
        snprintf(err, errlen, "cannot load the system CA certificates");
        goto fail;
    }
    if (ca_file != NULL && SSL_CTX_load_verify_locations(rl->ctx, ca_file, NULL) != 1) {
        snprintf(err, errlen, "cannot load the CA certificates of %s", ca_file);
        goto fail;
    }
    SSL_CTX_set_verify(rl->ctx, SSL_VERIFY_PEER, NULL);
    if ((rl->tls_fd = tcp_connect(host, port, timeout_ms, err, errlen)) < 0)
        goto fail;
    if ((rl->ssl = SSL_new(rl->ctx)) == NULL || SSL_set_fd(rl->ssl, rl->tls_fd) != 1)
        goto ossl_fail;
    param = SSL_get0_param(rl->ssl);
    if (is_ip) {
        if (X509_VERIFY_PARAM_set1_ip_asc(param, host) != 1)
            goto ossl_fail;
    } else {
        X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if (X509_VERIFY_PARAM_set1_host(param, host, 0) != 1 || SSL_set_tlsext_host_name(rl->ssl, host) != 1)
            goto ossl_fail;
    }
    if (SSL_connect(rl->ssl) != 1) {
        if ((vr = SSL_get_verify_result(rl->ssl)) != X509_V_OK)
            snprintf(err, errlen, "TLS: certificate verification failed: %s", X509_verify_cert_error_string(vr));
        else
            goto ossl_fail;
        goto fail;
    }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
        snprintf(err, errlen, "socketpair: %s", strerror(errno));
        goto fail;
    }
    rl->pair_fd = pair[0];
    signal(SIGPIPE, SIG_IGN); /* a relay write to a closed end must fail, not kill the CLI */
    pthread_mutex_lock(&relays_lock);
    if (num_relays == MAX_RELAYS || pthread_create(&th, NULL, relay_main, rl) != 0) {
        pthread_mutex_unlock(&relays_lock);
        snprintf(err, errlen, "cannot start the TLS relay");
        close(pair[1]);
        goto fail;
    }
    relays[num_relays++] = th;
    pthread_mutex_unlock(&relays_lock);
    return pair[1];
ossl_fail : {
    unsigned long e = ERR_peek_last_error();
    snprintf(err, errlen, "TLS: %s", e != 0 ? ERR_reason_error_string(e) : "handshake failed");
}
fail:
    ERR_clear_error();
    if (rl->ssl != NULL)
        SSL_free(rl->ssl);
    if (rl->ctx != NULL)
        SSL_CTX_free(rl->ctx);
    if (rl->tls_fd >= 0)
        close(rl->tls_fd);
    if (rl->pair_fd >= 0)
        close(rl->pair_fd);
    free(rl);
    return -1;
}

void aor_redis_tlspipe_join_all(void)
{
    pthread_mutex_lock(&relays_lock);
    while (num_relays > 0)
        pthread_join(relays[--num_relays], NULL);
    pthread_mutex_unlock(&relays_lock);
}
