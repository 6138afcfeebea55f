/*
 * redis.c — see redis.h.
 *
 * hiredis is only the RESP library here: redisFormatCommand* builds the bytes of a command and
 * a redisReader parses the replies. The transport is ours: an h2o socket on the worker's loop,
 * plain TCP for redis:// and TLS (h2o_socket_ssl_handshake over OpenSSL) for rediss://, the
 * one code path for both. hiredis 0.14 has no TLS, and its async context reads and writes the
 * file descriptor itself, so it could not be fed through a TLS socket.
 *
 * Redis answers in order, so one FIFO of pending commands per aor_redis holds them oldest
 * first: the head carries the earliest deadline and one timer serves them all, and each reply
 * the reader produces belongs to the head. A cancelled command stays in the FIFO as a
 * tombstone (cb NULL) until its reply arrives or the connection goes.
 *
 * A connection goes through: TCP connect → TLS handshake (rediss://) → the handshake commands
 * (AUTH, SELECT, PING) → up. User commands sent meanwhile wait in the output buffer behind the
 * handshake, which is inserted ahead of them when the transport is ready (begin_handshake):
 * the place where a credential fetched asynchronously (an Entra token for AUTH) slots in.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <hiredis/hiredis.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <h2o.h>
#include "cred.h"
#include "log.h"
#include "redis.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000
#define FLAP_WINDOW_MS 2000 /* a connection lost sooner than this after its handshake counts as a flap: reconnects back off */
#define SPARE_CMDS 64
#define TOKEN_CHECK_MS 1000 /* redis.auth: how often a live connection looks for a new token (besides the cache's wake-ups) */

const char aor_redis_err_timeout[] = "redis command timed out";
const char aor_redis_err_disconnected[] = "redis connection lost";
const char aor_redis_err_reply[] = "redis error reply";

enum conn_state {
    ST_DOWN,       /* no connection; retry_timer may be pending */
    ST_RESOLVING,  /* uv_getaddrinfo in flight */
    ST_CONNECTING, /* socket exists; TCP connect, TLS handshake and/or AUTH/SELECT/PING not done yet */
    ST_UP,         /* PING answered */
};

enum cmd_kind { CMD_USER, CMD_HANDSHAKE, CMD_HANDSHAKE_LAST, CMD_REAUTH };

/* owned by this module from send until its reply (or the connection's end); the caller's handle meanwhile */
struct aor_redis_cmd {
    struct aor_redis *r;
    aor_redis_cb cb; /* NULL: cancelled or internal */
    void *data;
    uint64_t deadline; /* uv_now() ms */
    struct aor_redis_cmd *next;
    enum cmd_kind kind;
    uint64_t serial; /* an Entra ID AUTH: the token's serial; 0 otherwise */
    int evalsha;     /* NOSCRIPT is its expected answer, not an error (only EVALSHA's) */
    int sent;        /* its bytes were handed to the socket: Redis may run it though no reply comes */
};

/* one transport attempt; freed when it is given up (the h2o socket closes on its own) */
/* a TCP connect of ours (libuv tells why it failed; h2o_socket_connect does not); the handle is
 * handed to h2o once connected. Freed by the handle's close callback (tcp is the first member). */
struct tcp_attempt {
    uv_tcp_t tcp;
    uv_connect_t req;
    struct conn *c; /* NULL once given up */
};

struct conn {
    struct aor_redis *r;
    struct tcp_attempt *tcp; /* until connected */
    h2o_socket_t *sock;      /* once connected */
    uv_stream_t *stream;     /* plain TCP: the socket's libuv stream (written directly, see conn_flush); NULL with TLS */
    redisReader *reader;
    char *out; /* command bytes not yet handed to the socket */
    size_t out_len, out_cap;
    char *wire; /* bytes handed to h2o_socket_write, until its callback; then the next `out` */
    size_t wire_len, wire_cap;
    int out_secret, wire_secret; /* the buffer holds an AUTH: zeroed before it is reused or freed */
    int ready;                   /* TCP (and TLS) established */
    int handshake_set;           /* AUTH/SELECT/PING are ahead of everything in `out`: it may be written */
    int open;                    /* the handshake succeeded: user commands may go (before, only `gate` bytes may) */
    size_t gate;                 /* bytes of the handshake still to hand to the socket while not open */
};

/* freed when both timers are closed and no getaddrinfo is in flight (see on_handle_closed) */
struct aor_redis {
    uv_loop_t *loop;
    struct aor_redis_url url;
    char *password; /* effective AUTH password; NULL = none */
    char *ca_file;  /* extra CA bundle for rediss:// (besides the system's); NULL = none */
    SSL_CTX *tls;   /* for rediss://: chain against the CAs, host name or IP checked */
    uint64_t timeout_ms;
    enum conn_state state;
    struct conn *conn;                 /* current attempt, NULL when none */
    struct aor_redis_cmd *head, *tail; /* pending on `conn`, oldest first */
    struct aor_redis_cmd *unsent;      /* the first pending command not handed to the socket yet; NULL: none */
    uint64_t connect_deadline;         /* uv_now() ms: TCP + TLS + handshake of the current attempt */
    unsigned failures;                 /* consecutive failed attempts; 0 = the last connection was healthy */
    unsigned flaps;                    /* consecutive connections lost within FLAP_WINDOW_MS of their handshake */
    uint64_t up_since;                 /* uv_now() ms: when the live connection's handshake ended */
    int ever_up;
    int in_dispatch;           /* replies being handed out: conn_kill must not free the reader */
    uv_timer_t deadline_timer; /* armed for the oldest command's deadline (lazily) */
    uv_timer_t retry_timer;    /* reconnect backoff */
    uv_getaddrinfo_t gai;
    int gai_active;
    int reconnect_after_gai; /* reconfigured while resolving the old host: start over when it ends */
    int open_handles;
    int destroyed;
    /* the commands of one loop iteration leave in one write: the output is handed to the socket
     * once, after the I/O callbacks (uv_check) or before the loop waits (uv_prepare) */
    uv_check_t flush_check;
    uv_prepare_t flush_prepare;
    int flush_armed;
    void (*before_flush)(void *data); /* a user's last commands of the iteration (see aor_redis_set_before_flush) */
    void *before_flush_data;
    struct aor_redis_cmd *spare_cmds; /* freed commands kept for reuse (at most SPARE_CMDS) */
    unsigned num_spare_cmds;
    uint64_t rng;
    /* keyless Entra ID auth (redis.auth); cred.type AOR_CRED_NONE = none */
    struct aor_cred_conf cred;     /* type and source only: sources live until exit, configs do not */
    char *object_id;               /* the AUTH user name */
    struct aor_cred_waitq *waitq;  /* the loop's (NULL: a handshake does not wait for a first token) */
    struct aor_cred_waiter waiter; /* queued while a handshake waits for a first token */
    uv_timer_t token_timer;        /* every TOKEN_CHECK_MS while there is redis.auth */
    uint64_t auth_serial;          /* the token the live connection is authenticated with */
    uint64_t handshake_serial;     /* the token in the current attempt's AUTH */
    uint64_t reauth_serial;        /* the token of a re-AUTH in flight, 0 = none */
    uint64_t refused_serial;       /* the last token Redis refused (reported to the cache once) */
    int token_wait;                /* down for want of a token: the next one that comes connects at once */
    const char *retiring;          /* non-NULL: the live connection takes no new command and goes, for this reason,
                                      once the replies of the commands already on it came (see conn_retire) */
    int token_logged;              /* "no token" was logged since the last connection */
};

static void count_error(void)
{
    __atomic_fetch_add(&aor_redis_errors_total, 1, __ATOMIC_RELAXED);
}

/* ---- URL ---- */

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* %-decoded copy of s[0..len), NULL on a bad escape, a NUL byte or ENOMEM */
static char *pct_decode(const char *s, size_t len)
{
    char *out = malloc(len + 1), *o = out;

    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < len; ++i) {
        int c = (unsigned char)s[i];
        if (c == '%') {
            int hi, lo;
            if (i + 2 >= len)
                goto bad;
            if ((hi = hexval(s[i + 1])) < 0 || (lo = hexval(s[i + 2])) < 0)
                goto bad;
            c = hi * 16 + lo;
            i += 2;
        }
        if (c == 0)
            goto bad;
        *o++ = (char)c;
    }
    *o = '\0';
    return out;
bad:
    free(out);
    return NULL;
}

void aor_redis_url_clear(struct aor_redis_url *u)
{
    free(u->host);
    free(u->user);
    if (u->password != NULL) {
        explicit_bzero(u->password, strlen(u->password));
        free(u->password);
    }
    memset(u, 0, sizeof(*u));
}

static int parse_uint(const char *s, size_t len, unsigned long max, unsigned long *out)
{
    unsigned long v = 0;

    if (len == 0 || len > 10)
        return -1;
    for (size_t i = 0; i < len; ++i) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    if (v > max)
        return -1;
    *out = v;
    return 0;
}

int aor_redis_url_parse(const char *url, struct aor_redis_url *out)
{
    const char *auth, *end, *at = NULL, *host, *host_end, *port = NULL;
    unsigned long v;

    memset(out, 0, sizeof(*out));
    out->port = 6379;
    if (url != NULL && strncmp(url, "rediss://", 9) == 0) {
        out->tls = 1;
        auth = url + 9;
    } else if (url != NULL && strncmp(url, "redis://", 8) == 0) {
        auth = url + 8;
    } else {
        return -1;
    }
    end = auth + strcspn(auth, "/?#");
    for (const char *p = auth; p < end; ++p)
        if (*p == '@')
            at = p;
    host = auth;
    if (at != NULL) {
        const char *colon = memchr(auth, ':', (size_t)(at - auth));
        const char *user_end = colon != NULL ? colon : at;
        if (user_end > auth && (out->user = pct_decode(auth, (size_t)(user_end - auth))) == NULL)
            goto bad;
        if (colon != NULL && colon + 1 < at && (out->password = pct_decode(colon + 1, (size_t)(at - colon - 1))) == NULL)
            goto bad;
        host = at + 1;
    }
    if (*host == '[') {
        const char *close = memchr(host, ']', (size_t)(end - host));
        if (close == NULL)
            goto bad;
        host_end = close;
        ++host;
        if (close + 1 < end) {
            if (close[1] != ':')
                goto bad;
            port = close + 2;
        }
        for (const char *p = host; p < host_end; ++p)
            if (!(hexval(*p) >= 0 || *p == ':' || *p == '.'))
                goto bad;
    } else {
        host_end = memchr(host, ':', (size_t)(end - host));
        if (host_end == NULL) {
            host_end = end;
        } else {
            port = host_end + 1;
        }
        for (const char *p = host; p < host_end; ++p)
            if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '.' || *p == '-' ||
                  *p == '_'))
                goto bad;
    }
    if (host_end == host || (out->host = strndup(host, (size_t)(host_end - host))) == NULL)
        goto bad;
    if (port != NULL) {
        if (parse_uint(port, (size_t)(end - port), 65535, &v) != 0 || v == 0)
            goto bad;
        out->port = (uint16_t)v;
    }
    if (*end == '/' && end[1] != '\0' && end[1] != '?' && end[1] != '#') {
        const char *db = end + 1;
        size_t db_len = strcspn(db, "?#");
        if (parse_uint(db, db_len, 1000000, &v) != 0)
            goto bad;
        out->db = (unsigned)v;
    }
    return 0;
bad:
    aor_redis_url_clear(out);
    return -1;
}

/* ---- TLS ---- */

/* OpenSSL's chain verification, with the connection's host name (its SNI) or IP address checked as part of it */
static int verify_chain_and_name(X509_STORE_CTX *store, void *arg)
{
    SSL *ssl = X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx());
    const char *name = ssl != NULL ? SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name) : NULL;
    X509_VERIFY_PARAM *param = X509_STORE_CTX_get0_param(store);
    unsigned char ip[sizeof(struct in6_addr)];

    (void)arg;
    if (name == NULL || param == NULL) {
        X509_STORE_CTX_set_error(store, X509_V_ERR_HOSTNAME_MISMATCH);
        return 0;
    }
    if (inet_pton(AF_INET, name, ip) == 1 || inet_pton(AF_INET6, name, ip) == 1) {
        if (X509_VERIFY_PARAM_set1_ip_asc(param, name) != 1)
            return 0;
    } else {
        X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if (X509_VERIFY_PARAM_set1_host(param, name, 0) != 1)
            return 0;
    }
    return X509_verify_cert(store);
}

/*
 * One client context per CA choice for the process, shared by the workers (reading the system
 * bundle costs a few milliseconds: paid once, not per worker nor per reconnect). Reference
 * counted; an SSL keeps its own reference, so a context outlives the sockets using it.
 */
static pthread_mutex_t tls_lock = PTHREAD_MUTEX_INITIALIZER;
static struct tls_entry {
    char *ca_file; /* NULL: the system bundle only */
    SSL_CTX *ctx;
    struct tls_entry *next;
} * tls_entries;

static SSL_CTX *make_tls_ctx(const char *ca_file)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

    if (ctx == NULL)
        return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    /* no close_notify exchange when we drop a connection: a hung server must not hold the socket */
    SSL_CTX_set_quiet_shutdown(ctx, 1);
    /* the system CA bundle (SSL_CERT_FILE / SSL_CERT_DIR override it), plus redis.ca_file */
    if (SSL_CTX_set_default_verify_paths(ctx) != 1 || (ca_file != NULL && SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1)) {
        unsigned long e = ERR_peek_last_error();
        AOR_LOG(AOR_LOG_ERROR, "redis", "cannot load the CA certificates%s%s: %s", ca_file != NULL ? " of " : "",
                ca_file != NULL ? ca_file : "", e != 0 ? ERR_reason_error_string(e) : "unknown error");
        ERR_clear_error();
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_cert_verify_callback(ctx, verify_chain_and_name, NULL);
    return ctx;
}

/* a new reference to the shared context for `ca_file`, or NULL */
static SSL_CTX *tls_acquire(const char *ca_file)
{
    struct tls_entry *e;
    SSL_CTX *ctx = NULL;

    pthread_mutex_lock(&tls_lock);
    for (e = tls_entries; e != NULL; e = e->next)
        if (e->ca_file == ca_file || (e->ca_file != NULL && ca_file != NULL && strcmp(e->ca_file, ca_file) == 0))
            break;
    if (e == NULL && (e = calloc(1, sizeof(*e))) != NULL) {
        if ((ca_file != NULL && (e->ca_file = strdup(ca_file)) == NULL) || (e->ctx = make_tls_ctx(ca_file)) == NULL) {
            free(e->ca_file);
            free(e);
            e = NULL;
        } else {
            e->next = tls_entries;
            tls_entries = e;
        }
    }
    if (e != NULL && SSL_CTX_up_ref(e->ctx) == 1)
        ctx = e->ctx;
    pthread_mutex_unlock(&tls_lock);
    return ctx;
}

/* ---- output ---- */

static void conn_flush(struct conn *c);

static void flush_due(struct aor_redis *r)
{
    if (r->before_flush != NULL)
        r->before_flush(r->before_flush_data); /* its commands find the flush armed and join this write */
    r->flush_armed = 0;
    uv_check_stop(&r->flush_check);
    uv_prepare_stop(&r->flush_prepare);
    if (r->conn != NULL)
        conn_flush(r->conn);
}

static void on_flush_check(uv_check_t *h)
{
    flush_due(h->data);
}

static void on_flush_prepare(uv_prepare_t *h)
{
    flush_due(h->data);
}

/* a user command joined the output: it leaves with the others of this loop iteration */
static void flush_later(struct aor_redis *r)
{
    if (r->flush_armed)
        return;
    r->flush_armed = 1;
    uv_check_start(&r->flush_check, on_flush_check);
    uv_prepare_start(&r->flush_prepare, on_flush_prepare);
}

void aor_redis_set_before_flush(struct aor_redis *r, void (*fn)(void *data), void *data)
{
    r->before_flush = fn;
    r->before_flush_data = data;
}

void aor_redis_flush_soon(struct aor_redis *r)
{
    flush_later(r);
}

void aor_redis_flush_now(struct aor_redis *r)
{
    if (r != NULL && !r->destroyed)
        flush_due(r);
}

/* appends `len` bytes to the output (at `at`: 0 = the front); 0, or -1 when over the bound or ENOMEM */
/* room for `len` more bytes of output, within the bound */
static int out_reserve(struct conn *c, size_t len)
{
    if (len > AOR_REDIS_MAX_OUTPUT_BYTES - c->out_len)
        return -1;
    if (c->out_len + len > c->out_cap) {
        size_t cap = c->out_cap != 0 ? c->out_cap : 1024;
        char *p;
        while (cap < c->out_len + len)
            cap *= 2;
        if (c->out_secret) {
            /* an AUTH is in there: the old block is zeroed, not left to the allocator as realloc would */
            if ((p = malloc(cap)) == NULL)
                return -1;
            if (c->out_len != 0)
                memcpy(p, c->out, c->out_len);
            if (c->out != NULL)
                explicit_bzero(c->out, c->out_cap);
            free(c->out);
        } else if ((p = realloc(c->out, cap)) == NULL) {
            return -1;
        }
        c->out = p;
        c->out_cap = cap;
    }
    return 0;
}

static int out_insert(struct conn *c, size_t at, const char *buf, size_t len)
{
    if (out_reserve(c, len) != 0)
        return -1;
    memmove(c->out + at + len, c->out + at, c->out_len - at);
    memcpy(c->out + at, buf, len);
    c->out_len += len;
    return 0;
}

/* ---- connection state ---- */

static void start_connect(struct aor_redis *r);
static void conn_lost(struct aor_redis *r, const char *err, const char *detail);
static void on_deadline_cb(uv_timer_t *t);

static uint64_t next_random(struct aor_redis *r)
{
    r->rng ^= r->rng << 13;
    r->rng ^= r->rng >> 7;
    r->rng ^= r->rng << 17;
    return r->rng;
}

static void on_retry(uv_timer_t *t)
{
    start_connect(t->data);
}

static void tcp_attempt_closed(uv_handle_t *h)
{
    free(h); /* the tcp_attempt: tcp is its first member */
}

/* a command's memory back to the connection's spares */
static void cmd_release(struct aor_redis *r, struct aor_redis_cmd *cmd)
{
    if (r->num_spare_cmds < SPARE_CMDS) {
        cmd->next = r->spare_cmds;
        r->spare_cmds = cmd;
        ++r->num_spare_cmds;
        return;
    }
    free(cmd);
}

static void redis_free(struct aor_redis *r)
{
    while (r->spare_cmds != NULL) {
        struct aor_redis_cmd *cmd = r->spare_cmds;
        r->spare_cmds = cmd->next;
        free(cmd);
    }
    free(r);
}

static void conn_free(struct conn *c)
{
    if (c->tcp != NULL) {
        c->tcp->c = NULL; /* its connect callback (ECANCELED) finds nothing to do */
        uv_close((uv_handle_t *)&c->tcp->tcp, tcp_attempt_closed);
        c->tcp = NULL;
    }
    if (c->sock != NULL) {
        c->sock->data = NULL;
        h2o_socket_close(c->sock); /* a write in flight is dropped; no callback of ours runs after this */
        ERR_clear_error();         /* SSL_shutdown during a handshake queues an error: not for the next user of this thread */
    }
    if (c->reader != NULL)
        redisReaderFree(c->reader);
    if (c->out != NULL)
        explicit_bzero(c->out, c->out_len); /* may hold an AUTH (password or token) */
    if (c->wire != NULL)
        explicit_bzero(c->wire, c->wire_len);
    free(c->out);
    free(c->wire);
    free(c);
}

/* fails every pending command with `err` (their callbacks run; they may send new commands, which are refused) */
static void fail_pending(struct aor_redis *r, const char *err)
{
    struct aor_redis_cmd *cmd;

    r->unsent = NULL;
    while ((cmd = r->head) != NULL) {
        r->head = cmd->next;
        if (r->head == NULL)
            r->tail = NULL;
        if (cmd->kind == CMD_USER && cmd->cb != NULL) {
            aor_redis_cb cb = cmd->cb;
            cmd->cb = NULL;
            count_error();
            cb(cmd->data, NULL, err);
        }
        cmd_release(r, cmd);
    }
}

/*
 * The current attempt or connection is over: the transport goes, every pending command fails
 * with `err`, and a reconnect is scheduled. No-op when already down. Safe from timers, socket
 * callbacks and reply callbacks (while replies are dispatched the reader is freed afterwards).
 */
static void conn_lost(struct aor_redis *r, const char *err, const char *detail)
{
    uint64_t delay = 0;
    int was_up = r->state == ST_UP;
    struct conn *c = r->conn;
    unsigned n;

    if (r->state == ST_DOWN)
        return;
    r->state = ST_DOWN;
    r->conn = NULL;
    r->retiring = NULL;
    r->auth_serial = r->reauth_serial = r->handshake_serial = 0;
    aor_cred_wait_cancel(&r->waiter);
    count_error();
    /* a working connection that dropped is rebuilt at once (commands queue meanwhile); a stuck
     * one or a failed attempt waits, and commands are refused until Redis answers again. A server
     * that completes the handshake and then drops the connection at once (again and again) is
     * not a working connection: those reconnects back off too, or they would be a tight loop */
    if (was_up && err != aor_redis_err_timeout) {
        r->failures = 0;
        if (uv_now(r->loop) - r->up_since < FLAP_WINDOW_MS)
            ++r->flaps;
        else
            r->flaps = 0;
    } else {
        ++r->failures;
    }
    n = r->failures != 0 ? r->failures : r->flaps;
    if (n <= 1)
        AOR_LOG(AOR_LOG_WARN, "redis", "%s:%u: %s%s%s", r->url.host, (unsigned)r->url.port,
                was_up ? "connection lost" : "connection failed", detail != NULL ? ": " : "", detail != NULL ? detail : "");
    else
        AOR_LOG(AOR_LOG_DEBUG, "redis", "%s:%u: attempt %u failed%s%s", r->url.host, (unsigned)r->url.port, n,
                detail != NULL ? ": " : "", detail != NULL ? detail : "");
    if (c != NULL) {
        c->r = NULL;
        if (r->in_dispatch) { /* the reply loop frees it when it sees c->r == NULL */
            if (c->sock != NULL) {
                c->sock->data = NULL;
                h2o_socket_close(c->sock);
                ERR_clear_error();
                c->sock = NULL;
            }
        } else {
            conn_free(c);
        }
    }
    uv_timer_stop(&r->deadline_timer);
    fail_pending(r, err);
    if (r->destroyed)
        return;
    if (n != 0) {
        unsigned shift = n - 1 < 8 ? n - 1 : 8;
        delay = (uint64_t)BACKOFF_MIN_MS << shift;
        if (delay > BACKOFF_MAX_MS)
            delay = BACKOFF_MAX_MS;
        delay = delay * 3 / 4 + next_random(r) % (delay / 2 + 1); /* ±25% so that workers do not reconnect in step */
    }
    uv_timer_start(&r->retry_timer, on_retry, delay, 0);
}

/*
 * The live connection must go though Redis is still serving it (a re-AUTH refused: Redis keeps
 * the old identity on the connection and runs the commands pipelined behind the AUTH; the
 * token's send margin passed): it takes no new command, and goes once the replies of those
 * already sent came (their deadlines bound the wait). Failing them as "disconnected" instead
 * would have their callers redo work Redis did (usage written twice).
 */
static void conn_retire(struct aor_redis *r, const char *why)
{
    if (r->state != ST_UP || r->retiring != NULL)
        return;
    r->retiring = why;
    if (!r->in_dispatch && r->head == NULL)
        conn_lost(r, aor_redis_err_disconnected, why);
    /* else dispatch_replies ends it when the FIFO is empty */
}

static void arm_deadline(struct aor_redis *r)
{
    uint64_t now = uv_now(r->loop), due;

    if (r->head != NULL)
        due = r->head->deadline;
    else if (r->state == ST_CONNECTING)
        due = r->connect_deadline;
    else
        return;
    if (r->state == ST_CONNECTING && r->connect_deadline < due)
        due = r->connect_deadline;
    uv_timer_start(&r->deadline_timer, on_deadline_cb, due > now ? due - now : 0, 0);
}

static void on_deadline_cb(uv_timer_t *t)
{
    struct aor_redis *r = t->data;
    uint64_t now = uv_now(r->loop);
    char detail[96];

    if (r->state == ST_CONNECTING && r->connect_deadline <= now) {
        if (r->waiter.next != NULL) /* still waiting for the cache's first token */
            snprintf(detail, sizeof(detail), "no Entra ID token for Redis within %llu ms", (unsigned long long)r->timeout_ms);
        else
            snprintf(detail, sizeof(detail), "not connected within %llu ms%s", (unsigned long long)r->timeout_ms,
                     r->conn != NULL && r->conn->ready ? "" : (r->url.tls ? " (TCP or TLS handshake)" : " (TCP)"));
        conn_lost(r, aor_redis_err_timeout, detail);
        return;
    }
    if (r->head != NULL && r->head->deadline <= now) {
        snprintf(detail, sizeof(detail), "no reply within %llu ms", (unsigned long long)r->timeout_ms);
        conn_lost(r, aor_redis_err_timeout, detail);
        return;
    }
    arm_deadline(r);
}

static void fifo_push(struct aor_redis *r, struct aor_redis_cmd *cmd)
{
    cmd->next = NULL;
    if (r->tail != NULL)
        r->tail->next = cmd;
    else
        r->head = cmd;
    r->tail = cmd;
    if (r->unsent == NULL)
        r->unsent = cmd;
    if (!uv_is_active((uv_handle_t *)&r->deadline_timer))
        arm_deadline(r);
}

/* SUBSCRIBE and MONITOR change what the reply stream carries; not for a shared connection */
static int forbidden_command(const char *buf, size_t len)
{
    static const char *const names[] = {"subscribe", "psubscribe", "unsubscribe", "punsubscribe", "monitor", NULL};
    const char *p = memchr(buf, '$', len), *name, *crlf;
    size_t n;

    if (p == NULL || (crlf = memchr(p, '\r', len - (size_t)(p - buf))) == NULL)
        return 1;
    name = crlf + 2;
    n = (size_t)strtoul(p + 1, NULL, 10);
    if ((size_t)(name - buf) + n > len)
        return 1;
    for (size_t i = 0; names[i] != NULL; ++i)
        if (strlen(names[i]) == n && strncasecmp(name, names[i], n) == 0)
            return 1;
    return 0;
}

static struct aor_redis_cmd *new_cmd(struct aor_redis *r, enum cmd_kind kind, aor_redis_cb cb, void *data)
{
    struct aor_redis_cmd *cmd = r->spare_cmds;

    if (cmd != NULL) {
        r->spare_cmds = cmd->next;
        --r->num_spare_cmds;
    } else if ((cmd = malloc(sizeof(*cmd))) == NULL) {
        return NULL;
    }
    cmd->r = r;
    cmd->cb = cb;
    cmd->data = data;
    cmd->kind = kind;
    cmd->deadline = uv_now(r->loop) + r->timeout_ms;
    cmd->next = NULL;
    cmd->serial = 0;
    cmd->evalsha = 0;
    cmd->sent = 0;
    return cmd;
}

static struct aor_redis_cmd *send_formatted(struct aor_redis *r, enum cmd_kind kind, aor_redis_cb cb, void *data, const char *buf,
                                            size_t len)
{
    struct aor_redis_cmd *cmd;

    if (r->conn == NULL || forbidden_command(buf, len) || (cmd = new_cmd(r, kind, cb, data)) == NULL)
        return NULL;
    if (out_insert(r->conn, r->conn->out_len, buf, len) != 0) {
        cmd_release(r, cmd);
        return NULL;
    }
    fifo_push(r, cmd);
    if (kind == CMD_USER) {
        flush_later(r);
    } else {
        r->conn->out_secret = 1; /* a re-AUTH */
        conn_flush(r->conn);
    }
    return cmd;
}

/*
 * Puts the handshake commands ahead of every user command (on the wire and in the FIFO), in
 * order, then lets the output go. Called once the transport is ready.
 */
static int queue_handshake(struct aor_redis *r, const char *user, const char *password, uint64_t serial)
{
    struct conn *c = r->conn;
    const char *argv[3][3];
    int argc[3], n = 0;
    char db[16];
    struct aor_redis_cmd *first = NULL, *last = NULL;
    size_t at = 0;

    if (password != NULL) {
        argv[n][0] = "AUTH";
        argc[n] = 2;
        if (user != NULL) {
            argv[n][1] = user;
            argv[n][2] = password;
            argc[n] = 3;
        } else {
            argv[n][1] = password;
        }
        ++n;
    }
    if (r->url.db != 0) {
        snprintf(db, sizeof(db), "%u", r->url.db);
        argv[n][0] = "SELECT";
        argv[n][1] = db;
        argc[n++] = 2;
    }
    argv[n][0] = "PING";
    argc[n++] = 1;
    for (int i = 0; i < n; ++i) {
        char *buf = NULL;
        int len = redisFormatCommandArgv(&buf, argc[i], argv[i], NULL);
        struct aor_redis_cmd *cmd = len > 0 ? new_cmd(r, i == n - 1 ? CMD_HANDSHAKE_LAST : CMD_HANDSHAKE, NULL, NULL) : NULL;
        int ok = cmd != NULL && out_insert(c, at, buf, (size_t)len) == 0;
        if (buf != NULL) {
            explicit_bzero(buf, (size_t)(len > 0 ? len : 0)); /* it may hold the password */
            redisFreeCommand(buf);
        }
        if (!ok) {
            if (cmd != NULL)
                cmd_release(r, cmd);
            while (first != NULL) {
                struct aor_redis_cmd *next = first->next;
                cmd_release(r, first);
                first = next;
            }
            return -1;
        }
        at += (size_t)len;
        if (password != NULL && i == 0)
            cmd->serial = serial;
        if (last != NULL)
            last->next = cmd;
        else
            first = cmd;
        last = cmd;
    }
    last->next = r->head;
    if (r->head == NULL)
        r->tail = last;
    r->head = first;
    c->handshake_set = 1;
    c->out_secret |= password != NULL;
    c->gate = at; /* the user commands behind it wait for its answers */
    arm_deadline(r);
    conn_flush(c);
    return 0;
}

static int has_entra(const struct aor_redis *r)
{
    return r->cred.type != AOR_CRED_NONE;
}

static void begin_handshake(struct aor_redis *r);

static void on_first_token(struct aor_cred_waiter *w)
{
    struct aor_redis *r = (struct aor_redis *)((char *)w - offsetof(struct aor_redis, waiter));

    if (!r->destroyed && r->state == ST_CONNECTING && r->conn != NULL && r->conn->ready && !r->conn->handshake_set)
        begin_handshake(r);
}

/* the cache has no token for Redis (its endpoint fails): Redis is down until one comes (check_token) */
static void no_token(struct aor_redis *r, const char *why)
{
    uint64_t delay;
    unsigned shift;

    r->token_wait = 1;
    if (!r->token_logged)
        AOR_LOG(AOR_LOG_WARN, "redis", "%s:%u: %s; Redis counts as unavailable until one comes", r->url.host, (unsigned)r->url.port,
                why);
    r->token_logged = 1;
    ++r->failures;
    shift = r->failures - 1 < 8 ? r->failures - 1 : 8;
    delay = (uint64_t)BACKOFF_MIN_MS << shift;
    if (delay > BACKOFF_MAX_MS)
        delay = BACKOFF_MAX_MS;
    uv_timer_start(&r->retry_timer, on_retry, delay, 0);
}

/*
 * The transport is ready: time for AUTH/SELECT/PING. With redis.auth the AUTH carries the
 * credential's current token from the shared cache; while the first one is still being fetched the
 * attempt waits for it (user commands wait in the output buffer, connect_deadline bounds it;
 * conn_lost() unqueues the wait). No token at all: the attempt is given up like a refused one.
 */
static void begin_handshake(struct aor_redis *r)
{
    struct aor_cred_header tok;
    uint64_t now;
    int st, rc;

    if (!has_entra(r)) {
        if (queue_handshake(r, r->url.user, r->password, 0) != 0)
            conn_lost(r, aor_redis_err_disconnected, "cannot queue the handshake");
        return;
    }
    if ((st = aor_cred_token(&r->cred, &tok)) == AOR_CRED_OK) {
        r->handshake_serial = tok.serial;
        rc = queue_handshake(r, r->object_id, tok.secret, tok.serial);
        aor_cred_header_release(&tok);
        if (rc != 0)
            conn_lost(r, aor_redis_err_disconnected, "cannot queue the handshake");
        return;
    }
    now = uv_now(r->loop);
    if (st == AOR_CRED_PENDING && r->connect_deadline > now &&
        aor_cred_wait(r->waitq, &r->cred, &r->waiter, r->connect_deadline - now, on_first_token) == 0)
        return;
    r->token_wait = 1;
    conn_lost(r, aor_redis_err_disconnected,
              st == AOR_CRED_PENDING ? "no Entra ID token for Redis within the connect timeout"
                                     : "no Entra ID token for Redis (the token endpoint fails)");
}

/*
 * An AUTH error that says the credential was refused: WRONGPASS (Redis 6+, Azure), or the older
 * "ERR invalid password" / "ERR invalid username-password pair". Any other error (LOADING while a
 * restarted Redis loads its data, "ERR max number of clients reached", BUSY) is not about the token.
 */
static int auth_refusal(const char *words)
{
    return words != NULL && (strncmp(words, "WRONGPASS", 9) == 0 || strncasecmp(words, "ERR invalid password", 20) == 0 ||
                             strncasecmp(words, "ERR invalid username-password", 29) == 0);
}

/* Redis refused the token `serial` (WRONGPASS): said once per token, and the cache asked for a fresh one once */
static void token_refused(struct aor_redis *r, uint64_t serial, const char *words)
{
    if (serial == 0 || serial == r->refused_serial || !auth_refusal(words))
        return;
    r->refused_serial = serial;
    AOR_LOG(AOR_LOG_WARN, "redis", "%s:%u: Redis refused the Entra ID token of object_id %s: %.200s; asking for a new token",
            r->url.host, (unsigned)r->url.port, r->object_id, words != NULL ? words : "");
    aor_cred_refused(&r->cred, serial);
}

/* a new token for a live connection: AUTH again, in order with the commands (Redis keeps the old identity until it answers) */
static void send_reauth(struct aor_redis *r, const struct aor_cred_header *tok)
{
    const char *argv[3] = {"AUTH", r->object_id, tok->secret};
    size_t argvlen[3] = {4, strlen(r->object_id), tok->secret_len};
    struct aor_redis_cmd *cmd = NULL;
    char *buf = NULL;
    int len = redisFormatCommandArgv(&buf, 3, argv, argvlen);

    if (len > 0)
        cmd = send_formatted(r, CMD_REAUTH, NULL, NULL, buf, (size_t)len);
    if (buf != NULL) {
        explicit_bzero(buf, (size_t)(len > 0 ? len : 0));
        redisFreeCommand(buf);
    }
    if (cmd == NULL) {
        conn_lost(r, aor_redis_err_disconnected, "cannot queue the re-authentication");
        return;
    }
    cmd->serial = tok->serial;
    r->reauth_serial = tok->serial;
}

/*
 * redis.auth: what the credential's token means for the connection now (the timer, the cache's
 * wake-ups, a handshake's end). Down for want of a token and one came: connect. Up and the cache
 * holds a newer token: re-AUTH. Up and no valid token any more: drop (Azure would at expiry).
 */
static void check_token(struct aor_redis *r)
{
    struct aor_cred_header tok;
    int st;

    if (!has_entra(r) || r->destroyed)
        return;
    st = aor_cred_token(&r->cred, &tok);
    if (r->state == ST_DOWN && r->token_wait && st != AOR_CRED_UNAVAILABLE && !r->gai_active) {
        r->token_wait = 0;
        uv_timer_stop(&r->retry_timer);
        start_connect(r);
    } else if (r->state == ST_UP && st != AOR_CRED_OK) {
        r->token_wait = 1;
        conn_retire(r, "the Entra ID token is no longer valid and no new one came");
    } else if (r->state == ST_UP && r->retiring == NULL && tok.serial != r->auth_serial && tok.serial != r->reauth_serial &&
               r->reauth_serial == 0) {
        send_reauth(r, &tok);
    }
    aor_cred_header_release(&tok);
}

static void on_token_timer(uv_timer_t *t)
{
    check_token(t->data);
}

static void on_token_news(void *data)
{
    check_token(data);
}

static void on_written(h2o_socket_t *sock, const char *err)
{
    struct conn *c = sock->data;

    if (c == NULL)
        return;
    if (c->wire_secret)
        explicit_bzero(c->wire, c->wire_len);
    if (c->out == NULL) { /* the written buffer takes the next commands: no malloc per write */
        c->out = c->wire;
        c->out_cap = c->wire_cap;
        c->out_len = 0;
    } else {
        free(c->wire);
    }
    c->wire = NULL;
    c->wire_len = c->wire_cap = 0;
    c->wire_secret = 0;
    if (err != NULL) {
        conn_lost(c->r, aor_redis_err_disconnected, err);
        return;
    }
    conn_flush(c);
}

/* every pending command's bytes are in what goes to the socket now (a partial write counts: Redis
 * may run what it got) */
static void mark_sent(struct aor_redis *r)
{
    for (struct aor_redis_cmd *cmd = r->unsent; cmd != NULL; cmd = cmd->next)
        cmd->sent = 1;
    r->unsent = NULL;
}

/* hands the output to the socket when it may go and no write is in flight */
static void conn_flush(struct conn *c)
{
    h2o_iovec_t buf;

    if (!c->ready || !c->handshake_set || c->wire != NULL || c->out_len == 0 || (!c->open && c->gate == 0))
        return;
    if (!c->open && c->gate < c->out_len) {
        /* only the handshake: no command goes on a connection before its AUTH was answered OK */
        if ((c->wire = malloc(c->gate)) == NULL) {
            conn_lost(c->r, aor_redis_err_disconnected, "out of memory");
            return;
        }
        c->wire_len = c->wire_cap = c->gate;
        c->wire_secret = 1;
        memcpy(c->wire, c->out, c->gate);
        explicit_bzero(c->out, c->gate);
        memmove(c->out, c->out + c->gate, c->out_len - c->gate);
        c->out_len -= c->gate;
        c->gate = 0;
    } else {
        if (!c->open)
            c->gate -= c->out_len;
        else
            mark_sent(c->r);
        if (c->open && c->stream != NULL && c->sock != NULL && c->out_len <= INT_MAX) {
            /* plain TCP, nothing of ours in flight: the socket at once. Taken whole (the usual
             * case), that is all: no write request and callback, nor the epoll_ctl libuv spends
             * re-arming the watcher after each uv_write (two syscalls a request at one in flight) */
            uv_buf_t b = uv_buf_init(c->out, (unsigned)c->out_len);
            int n = uv_try_write(c->stream, &b, 1);
            if (n > 0 && (size_t)n == c->out_len) {
                if (c->out_secret)
                    explicit_bzero(c->out, c->out_len);
                c->out_len = 0;
                c->out_secret = 0;
                return;
            }
            if (n > 0) {
                memmove(c->out, c->out + n, c->out_len - (size_t)n);
                if (c->out_secret) /* the tail keeps a copy of what moved: maybe a re-AUTH's token */
                    explicit_bzero(c->out + c->out_len - (size_t)n, (size_t)n);
                c->out_len -= (size_t)n;
            }
            /* else EAGAIN (the kernel's buffer is full) or an error, which h2o's write reports */
        }
        c->wire = c->out;
        c->wire_len = c->out_len;
        c->wire_cap = c->out_cap;
        c->wire_secret = c->out_secret;
        c->out = NULL;
        c->out_len = c->out_cap = 0;
        c->out_secret = 0;
    }
    buf = h2o_iovec_init(c->wire, c->wire_len);
    h2o_socket_write(c->sock, &buf, 1, on_written);
}

static void handshake_reply(struct aor_redis *r, const struct aor_redis_cmd *cmd, const redisReply *reply)
{
    enum cmd_kind kind = cmd->kind;

    if (kind == CMD_REAUTH) {
        if (reply->type == REDIS_REPLY_STATUS && strcmp(reply->str, "OK") == 0) {
            r->auth_serial = cmd->serial;
            r->reauth_serial = 0;
            AOR_LOG(AOR_LOG_DEBUG, "redis", "%s:%u: re-authenticated with a new Entra ID token", r->url.host,
                    (unsigned)r->url.port);
            check_token(r); /* a newer one came meanwhile */
            return;
        }
        token_refused(r, cmd->serial, reply->type == REDIS_REPLY_ERROR ? reply->str : "not OK");
        r->reauth_serial = 0;
        conn_retire(r, "re-authentication with a new Entra ID token refused");
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        /* the server's words (e.g. WRONGPASS, LOADING) never contain the password */
        token_refused(r, cmd->serial, reply->str);
        conn_lost(r, aor_redis_err_disconnected, reply->str);
        return;
    }
    if (kind == CMD_HANDSHAKE_LAST && (reply->type != REDIS_REPLY_STATUS || strcmp(reply->str, "PONG") != 0)) {
        /* only a PONG answers PING: anything else is a server speaking out of turn (a reply that
         * raced our handshake would otherwise be taken for it and the stream be off by one) */
        conn_lost(r, aor_redis_err_disconnected, "protocol error: the handshake's PING was not answered PONG");
        return;
    }
    if (kind == CMD_HANDSHAKE_LAST) {
        if (r->failures != 0 || !r->ever_up || r->token_logged)
            AOR_LOG(AOR_LOG_INFO, "redis", "%s:%u: connected%s%s (db %u)", r->url.host, (unsigned)r->url.port,
                    r->url.tls ? " over TLS, certificate verified" : "", has_entra(r) ? ", Entra ID token accepted" : "",
                    r->url.db);
        r->state = ST_UP;
        r->up_since = uv_now(r->loop);
        r->failures = 0;
        r->ever_up = 1;
        r->token_logged = 0;
        r->auth_serial = r->handshake_serial;
        r->conn->open = 1;
        conn_flush(r->conn);
        if (r->state == ST_UP)
            arm_deadline(r);
        if (r->state == ST_UP)
            check_token(r);
    }
}

/* hands the complete replies in the reader to their commands, oldest first */
static void dispatch_replies(struct conn *c)
{
    struct aor_redis *r = c->r;
    void *reply_;

    r->in_dispatch = 1;
    while (c->r != NULL) {
        struct aor_redis_cmd *cmd;
        const redisReply *reply;
        if (redisReaderGetReply(c->reader, &reply_) != REDIS_OK) {
            char detail[160];
            snprintf(detail, sizeof(detail), "protocol error: %s",
                     c->reader->err == REDIS_ERR_OOM ? "array reply over " AOR_REDIS_MAX_ARRAY_ELEMENTS_STR
                                                       " elements (or out of memory)"
                                                     : c->reader->errstr);
            conn_lost(r, aor_redis_err_disconnected, detail);
            break;
        }
        if ((reply = reply_) == NULL)
            break;
        if ((cmd = r->head) == NULL) {
            freeReplyObject(reply_);
            conn_lost(r, aor_redis_err_disconnected, "protocol error: a reply to no command");
            break;
        }
        r->head = cmd->next;
        if (r->head == NULL)
            r->tail = NULL;
        if (r->unsent == cmd) /* a handshake command (its bytes went out under the gate, unmarked) */
            r->unsent = cmd->next;
        if (cmd->kind != CMD_USER) {
            handshake_reply(r, cmd, reply);
        } else if (cmd->cb != NULL) {
            aor_redis_cb cb = cmd->cb;
            const char *err = reply->type == REDIS_REPLY_ERROR ? aor_redis_err_reply : NULL;
            cmd->cb = NULL;
            /* NOSCRIPT is the expected answer to the first EVALSHA after a start or SCRIPT FLUSH
             * (the caller loads the script and goes on): not a failure an operator should see */
            if (err != NULL && !(cmd->evalsha && reply->len >= 8 && memcmp(reply->str, "NOSCRIPT", 8) == 0))
                count_error();
            cb(cmd->data, reply, err);
        }
        cmd_release(r, cmd);
        freeReplyObject(reply_);
    }
    if (c->r != NULL && r->retiring != NULL && r->head == NULL)
        conn_lost(r, aor_redis_err_disconnected, r->retiring); /* in dispatch: the socket closes, `c` is freed below */
    r->in_dispatch = 0;
    if (c->r == NULL) {
        conn_free(c);
        return;
    }
    /* the head changed: its deadline is the one to watch */
    uv_timer_stop(&r->deadline_timer);
    arm_deadline(r);
}

static void on_read(h2o_socket_t *sock, const char *err)
{
    struct conn *c = sock->data;
    struct aor_redis *r;

    if (c == NULL)
        return;
    r = c->r;
    if (err != NULL) {
        conn_lost(r, aor_redis_err_disconnected, err == h2o_socket_error_closed ? "closed by the server" : err);
        return;
    }
    if (sock->input->size != 0) {
        if (redisReaderFeed(c->reader, sock->input->bytes, sock->input->size) != REDIS_OK) {
            conn_lost(r, aor_redis_err_disconnected, "out of memory");
            return;
        }
        h2o_buffer_consume(&sock->input, sock->input->size);
        /* a reply still incomplete past the bound (a huge bulk string) ends the connection */
        if (c->reader->len - c->reader->pos > AOR_REDIS_MAX_REPLY_BYTES) {
            conn_lost(r, aor_redis_err_disconnected, "reply over " AOR_REDIS_MAX_REPLY_BYTES_STR " bytes");
            return;
        }
        dispatch_replies(c);
    }
}

static void on_tls_ready(h2o_socket_t *sock, const char *err)
{
    struct conn *c = sock->data;
    struct aor_redis *r;
    unsigned char ip[sizeof(struct in6_addr)];

    if (c == NULL)
        return;
    r = c->r;
    /* h2o checks the name again after OpenSSL, but only against DNS names; for an IP address
     * OpenSSL's check (X509_VERIFY_PARAM_set1_ip, during the handshake) is the one that counts */
    if (err == h2o_socket_error_ssl_cert_name_mismatch &&
        (inet_pton(AF_INET, r->url.host, ip) == 1 || inet_pton(AF_INET6, r->url.host, ip) == 1))
        err = NULL;
    if (err != NULL) {
        char detail[160];
        snprintf(detail, sizeof(detail), "TLS handshake failed: %s", err);
        ERR_clear_error();
        conn_lost(r, aor_redis_err_disconnected, detail);
        return;
    }
    c->ready = 1;
    h2o_socket_read_start(sock, on_read);
    begin_handshake(r);
    /* bytes that came with the end of the handshake were decrypted already: a server speaking first is a protocol error */
    if (sock->data == c && c->r != NULL && sock->input->size != 0)
        on_read(sock, NULL);
}

static void on_connected(uv_connect_t *req, int status)
{
    struct tcp_attempt *ta = req->data;
    struct conn *c = ta->c;
    struct aor_redis *r;
    h2o_socket_t *sock;
    int fd, on = 1;

    if (c == NULL || status == UV_ECANCELED)
        return;
    r = c->r;
    if (status < 0) {
        conn_lost(r, aor_redis_err_disconnected, uv_strerror(status)); /* closes the handle */
        return;
    }
    c->tcp = NULL;
    ta->c = NULL;
    sock = c->sock = h2o_uv_socket_create((uv_stream_t *)&ta->tcp, tcp_attempt_closed);
    sock->data = c;
    c->stream = r->url.tls ? NULL : (uv_stream_t *)&ta->tcp;
    if ((fd = h2o_socket_get_fd(sock)) >= 0) {
        int idle = 15, intvl = 15, cnt = 3; /* keepalive probes: a peer that vanished without a FIN is noticed even when idle */
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
    }
    if (r->url.tls) {
        h2o_socket_ssl_handshake(sock, r->tls, r->url.host, on_tls_ready);
        return;
    }
    c->ready = 1;
    h2o_socket_read_start(sock, on_read);
    begin_handshake(r);
}

/* a bound on what one array reply may allocate up front (hiredis 0.14 trusts the count) */
static redisReplyObjectFunctions bounded_fn;
static void *(*default_create_array)(const redisReadTask *, int);

static void *bounded_create_array(const redisReadTask *task, int elements)
{
    if (elements < 0 || elements > AOR_REDIS_MAX_ARRAY_ELEMENTS)
        return NULL; /* the reader reports out of memory: the connection goes */
    return default_create_array(task, elements);
}

static pthread_once_t fn_once = PTHREAD_ONCE_INIT;

static void init_bounded_fn(void)
{
    redisReader *tmp = redisReaderCreate();

    if (tmp == NULL)
        return;
    bounded_fn = *tmp->fn;
    default_create_array = bounded_fn.createArray;
    bounded_fn.createArray = bounded_create_array;
    redisReaderFree(tmp);
}

redisReader *aor_redis_reader_create(void)
{
    pthread_once(&fn_once, init_bounded_fn);
    if (default_create_array == NULL)
        return NULL;
    return redisReaderCreateWithFunctions(&bounded_fn);
}

static void connect_to(struct aor_redis *r, const struct sockaddr *sa)
{
    struct conn *c = calloc(1, sizeof(*c));
    int rc;

    r->state = ST_CONNECTING;
    r->connect_deadline = uv_now(r->loop) + r->timeout_ms;
    if (c == NULL || (c->reader = aor_redis_reader_create()) == NULL) {
        free(c);
        conn_lost(r, aor_redis_err_disconnected, "out of memory");
        return;
    }
    if (r->url.tls && r->tls == NULL) {
        redisReaderFree(c->reader);
        free(c);
        conn_lost(r, aor_redis_err_disconnected, "no TLS context (CA certificates not loaded)");
        return;
    }
    c->r = r;
    r->conn = c;
    if ((c->tcp = calloc(1, sizeof(*c->tcp))) == NULL || uv_tcp_init(r->loop, &c->tcp->tcp) != 0) {
        free(c->tcp);
        c->tcp = NULL;
        conn_lost(r, aor_redis_err_disconnected, "cannot make a socket");
        return;
    }
    c->tcp->c = c;
    c->tcp->req.data = c->tcp;
    if ((rc = uv_tcp_connect(&c->tcp->req, &c->tcp->tcp, sa, on_connected)) != 0) {
        conn_lost(r, aor_redis_err_disconnected, uv_strerror(rc)); /* closes the handle */
        return;
    }
    arm_deadline(r);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct aor_redis *r = req->data;
    const struct addrinfo *ai, *pick = NULL;
    struct sockaddr_storage ss;
    socklen_t sslen = 0;

    r->gai_active = 0;
    if (r->destroyed) {
        uv_freeaddrinfo(res);
        if (r->open_handles == 0)
            redis_free(r);
        return;
    }
    if (status == 0) {
        /* IPv4 first, as hiredis itself does */
        for (ai = res; ai != NULL && pick == NULL; ai = ai->ai_next)
            if (ai->ai_family == AF_INET)
                pick = ai;
        for (ai = res; ai != NULL && pick == NULL; ai = ai->ai_next)
            if (ai->ai_family == AF_INET6)
                pick = ai;
        if (pick != NULL && pick->ai_addrlen <= sizeof(ss)) {
            memcpy(&ss, pick->ai_addr, pick->ai_addrlen);
            sslen = pick->ai_addrlen;
        }
    }
    uv_freeaddrinfo(res);
    if (r->reconnect_after_gai) { /* resolved the old host: resolve the new one */
        r->reconnect_after_gai = 0;
        start_connect(r);
        return;
    }
    if (sslen == 0) {
        conn_lost(r, aor_redis_err_disconnected, status != 0 ? uv_strerror(status) : "no address");
        return;
    }
    ((struct sockaddr_in *)&ss)->sin_port = htons(r->url.port); /* same offset in sockaddr_in6 */
    connect_to(r, (struct sockaddr *)&ss);
}

static void start_connect(struct aor_redis *r)
{
    struct addrinfo hints;
    struct sockaddr_in sin;
    struct sockaddr_in6 sin6;

    if (has_entra(r)) {
        /* no token and none on its way: not even a TCP connection (check_token connects when one comes) */
        struct aor_cred_header tok;
        int st = aor_cred_token(&r->cred, &tok);
        aor_cred_header_release(&tok);
        if (st == AOR_CRED_UNAVAILABLE) {
            r->state = ST_DOWN;
            no_token(r, "no Entra ID token for Redis (the token endpoint fails)");
            return;
        }
    }
    memset(&sin, 0, sizeof(sin));
    memset(&sin6, 0, sizeof(sin6));
    if (inet_pton(AF_INET, r->url.host, &sin.sin_addr) == 1) {
        sin.sin_family = AF_INET;
        sin.sin_port = htons(r->url.port);
        connect_to(r, (struct sockaddr *)&sin);
        return;
    }
    if (inet_pton(AF_INET6, r->url.host, &sin6.sin6_addr) == 1) {
        sin6.sin6_family = AF_INET6;
        sin6.sin6_port = htons(r->url.port);
        connect_to(r, (struct sockaddr *)&sin6);
        return;
    }
    /* getaddrinfo blocks: on libuv's thread pool, never on the loop */
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    r->state = ST_RESOLVING;
    r->gai.data = r;
    if (uv_getaddrinfo(r->loop, &r->gai, on_resolved, r->url.host, NULL, &hints) != 0) {
        conn_lost(r, aor_redis_err_disconnected, "cannot start name resolution");
        return;
    }
    r->gai_active = 1;
}

/* ---- public ---- */

static void on_handle_closed(uv_handle_t *h)
{
    struct aor_redis *r = h->data;

    if (--r->open_handles == 0 && !r->gai_active)
        redis_free(r);
}

static void free_secret(char *s)
{
    if (s != NULL) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

/* installs url/password/ca_file/entra (and the TLS context they need) into `r`; 0, or -1 leaving `r` as it was */
static int apply_settings(struct aor_redis *r, struct aor_redis_url *u, const char *password, const char *ca_file,
                          const struct aor_redis_entra *entra)
{
    char *pw = NULL, *ca = NULL, *oid = NULL;
    SSL_CTX *tls = NULL;

    if (entra != NULL && (entra->cred == NULL || entra->cred->type == AOR_CRED_NONE || entra->object_id == NULL))
        entra = NULL;
    if (entra != NULL)
        password = NULL; /* one AUTH: the token */
    if ((password != NULL && (pw = strdup(password)) == NULL) || (ca_file != NULL && (ca = strdup(ca_file)) == NULL) ||
        (entra != NULL && (oid = strdup(entra->object_id)) == NULL))
        goto fail;
    if (u->tls && (tls = tls_acquire(ca_file)) == NULL)
        goto fail;
    free(r->object_id);
    r->object_id = oid;
    memset(&r->cred, 0, sizeof(r->cred));
    if (entra != NULL) {
        r->cred.type = entra->cred->type;
        r->cred.source = entra->cred->source;
        if (entra->waitq != NULL)
            r->waitq = entra->waitq;
        aor_cred_waitq_watch(r->waitq, on_token_news, r);
    } else {
        aor_cred_waitq_watch(r->waitq, NULL, NULL);
    }
    if (r->password != r->url.password)
        free_secret(r->password);
    aor_redis_url_clear(&r->url);
    free(r->ca_file);
    if (r->tls != NULL)
        SSL_CTX_free(r->tls);
    r->url = *u;
    memset(u, 0, sizeof(*u));
    r->password = pw != NULL ? pw : r->url.password; /* shared with the URL: freed with it */
    r->ca_file = ca;
    r->tls = tls;
    return 0;
fail:
    free_secret(pw);
    free(ca);
    free(oid);
    return -1;
}

struct aor_redis *aor_redis_create(uv_loop_t *loop, const char *url, const char *password, const char *ca_file,
                                   const struct aor_redis_entra *entra, uint64_t command_timeout_ms)
{
    struct aor_redis *r = calloc(1, sizeof(*r));
    struct aor_redis_url u;

    if (r == NULL)
        return NULL;
    if (aor_redis_url_parse(url, &u) != 0) {
        free(r);
        return NULL;
    }
    if (apply_settings(r, &u, password, ca_file, entra) != 0) {
        aor_redis_url_clear(&u);
        aor_cred_waitq_watch(r->waitq, NULL, NULL);
        free(r);
        return NULL;
    }
    r->loop = loop;
    r->timeout_ms = command_timeout_ms != 0 ? command_timeout_ms : 1;
    r->state = ST_DOWN;
    if (getrandom(&r->rng, sizeof(r->rng), GRND_NONBLOCK) != sizeof(r->rng) || r->rng == 0)
        r->rng = (uint64_t)(uintptr_t)r ^ uv_hrtime() ^ 0x9e3779b97f4a7c15ull;
    uv_timer_init(loop, &r->deadline_timer);
    uv_timer_init(loop, &r->retry_timer);
    uv_timer_init(loop, &r->token_timer);
    r->deadline_timer.data = r;
    r->retry_timer.data = r;
    r->token_timer.data = r;
    uv_check_init(loop, &r->flush_check);
    uv_prepare_init(loop, &r->flush_prepare);
    r->flush_check.data = r;
    r->flush_prepare.data = r;
    uv_unref((uv_handle_t *)&r->flush_check);
    uv_unref((uv_handle_t *)&r->flush_prepare);
    r->open_handles = 5;
    if (has_entra(r))
        uv_timer_start(&r->token_timer, on_token_timer, TOKEN_CHECK_MS, TOKEN_CHECK_MS);
    start_connect(r);
    return r;
}

void aor_redis_destroy(struct aor_redis *r)
{
    if (r == NULL)
        return;
    r->destroyed = 1;
    aor_cred_wait_cancel(&r->waiter);
    aor_cred_waitq_watch(r->waitq, NULL, NULL);
    r->waitq = NULL;
    free(r->object_id);
    r->object_id = NULL;
    memset(&r->cred, 0, sizeof(r->cred));
    for (struct aor_redis_cmd *c = r->head; c != NULL; c = c->next)
        c->cb = NULL; /* dropped without a call */
    if (r->conn != NULL) {
        struct conn *c = r->conn;
        r->conn = NULL;
        c->r = NULL;
        conn_free(c);
    }
    r->state = ST_DOWN;
    fail_pending(r, aor_redis_err_disconnected); /* frees the tombstones; no callback runs */
    if (r->password != r->url.password)
        free_secret(r->password);
    r->password = NULL;
    aor_redis_url_clear(&r->url);
    free(r->ca_file);
    r->ca_file = NULL;
    if (r->tls != NULL)
        SSL_CTX_free(r->tls);
    r->tls = NULL;
    if (r->gai_active)
        uv_cancel((uv_req_t *)&r->gai); /* on_resolved still runs (ECANCELED) and frees r if last */
    uv_timer_stop(&r->deadline_timer);
    uv_timer_stop(&r->retry_timer);
    uv_timer_stop(&r->token_timer);
    uv_close((uv_handle_t *)&r->deadline_timer, on_handle_closed);
    uv_close((uv_handle_t *)&r->retry_timer, on_handle_closed);
    uv_close((uv_handle_t *)&r->token_timer, on_handle_closed);
    uv_check_stop(&r->flush_check);
    uv_prepare_stop(&r->flush_prepare);
    uv_close((uv_handle_t *)&r->flush_check, on_handle_closed);
    uv_close((uv_handle_t *)&r->flush_prepare, on_handle_closed);
}

static int same_str(const char *a, const char *b)
{
    return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

int aor_redis_reconfigure(struct aor_redis *r, const char *url, const char *password, const char *ca_file,
                          const struct aor_redis_entra *entra)
{
    struct aor_redis_url u;
    int with_entra = entra != NULL && entra->cred != NULL && entra->cred->type != AOR_CRED_NONE && entra->object_id != NULL;

    if (r == NULL || r->destroyed || aor_redis_url_parse(url, &u) != 0)
        return -1;
    if (with_entra)
        password = NULL;
    if (same_str(r->url.host, u.host) && r->url.port == u.port && r->url.db == u.db && r->url.tls == u.tls &&
        same_str(r->url.user, u.user) && same_str(r->password, password != NULL ? password : u.password) &&
        (!u.tls || same_str(r->ca_file, ca_file)) && with_entra == has_entra(r) &&
        (!with_entra || (r->cred.type == entra->cred->type && r->cred.source == entra->cred->source &&
                         same_str(r->object_id, entra->object_id)))) {
        aor_redis_url_clear(&u);
        return 0;
    }
    if (apply_settings(r, &u, password, ca_file, entra) != 0) {
        aor_redis_url_clear(&u);
        return -1;
    }
    r->token_wait = r->token_logged = 0;
    r->refused_serial = 0;
    if (has_entra(r))
        uv_timer_start(&r->token_timer, on_token_timer, TOKEN_CHECK_MS, TOKEN_CHECK_MS);
    else
        uv_timer_stop(&r->token_timer);
    AOR_LOG(AOR_LOG_INFO, "redis", "settings changed by a reload: reconnecting to %s:%u%s", r->url.host, (unsigned)r->url.port,
            r->url.tls ? " over TLS" : "");
    /* the old connection goes now (its pending commands fail as disconnected, so their waiters
     * answer); the new one is tried at once, without the backoff of the old one's failures */
    switch (r->state) {
    case ST_UP:
    case ST_CONNECTING:
        conn_lost(r, aor_redis_err_disconnected, "reconfigured");
        break;
    case ST_RESOLVING:
        r->reconnect_after_gai = 1;
        return 0;
    case ST_DOWN:
        break;
    }
    r->failures = r->flaps = 0;
    r->ever_up = 0; /* the first connection with the new settings is logged */
    uv_timer_start(&r->retry_timer, on_retry, 0, 0);
    return 0;
}

int aor_redis_is_up(const struct aor_redis *r)
{
    return r != NULL && r->state == ST_UP && r->retiring == NULL;
}

static int accepting(const struct aor_redis *r)
{
    return r != NULL && r->conn != NULL &&
           ((r->state == ST_UP && r->retiring == NULL) || (r->state == ST_CONNECTING && r->failures == 0));
}

int aor_redis_accepting(const struct aor_redis *r)
{
    return accepting(r);
}

struct aor_redis_cmd *aor_redis_command(struct aor_redis *r, aor_redis_cb cb, void *data, const char *fmt, ...)
{
    struct aor_redis_cmd *cmd = NULL;
    char *buf = NULL;
    va_list ap;
    int len;

    if (!accepting(r)) {
        count_error();
        return NULL;
    }
    va_start(ap, fmt);
    len = redisvFormatCommand(&buf, fmt, ap);
    va_end(ap);
    if (len > 0)
        cmd = send_formatted(r, CMD_USER, cb, data, buf, (size_t)len);
    free(buf);
    if (cmd == NULL)
        count_error();
    return cmd;
}

char *aor_redis_put_count(char *p, char prefix, size_t n)
{
    char tmp[24], *q = tmp + sizeof(tmp);

    do
        *--q = (char)('0' + n % 10);
    while ((n /= 10) != 0);
    *p++ = prefix;
    memcpy(p, q, (size_t)(tmp + sizeof(tmp) - q));
    p += tmp + sizeof(tmp) - q;
    *p++ = '\r';
    *p++ = '\n';
    return p;
}

/* a user command must not turn the connection into a subscriber or a monitor */
static int forbidden_name(const char *name, size_t n)
{
    static const char *const names[] = {"subscribe", "psubscribe", "unsubscribe", "punsubscribe", "monitor", NULL};

    for (size_t i = 0; names[i] != NULL; ++i)
        if (strlen(names[i]) == n && strncasecmp(name, names[i], n) == 0)
            return 1;
    return 0;
}

/*
 * The request side of RESP is a multi-bulk of counted strings; it is written here, straight into
 * the connection's output, rather than with hiredis' redisFormatCommandArgv, which formats every
 * count with sprintf (~740 instructions per argument: 18 % of the router's CPU per request with
 * quotas on, callgrind, bench/README.md) into a buffer of its own. Replies are still read by
 * hiredis' redisReader.
 */
struct aor_redis_cmd *aor_redis_command_argv(struct aor_redis *r, aor_redis_cb cb, void *data, int argc, const char **argv,
                                             const size_t *argvlen)
{
    struct aor_redis_cmd *cmd;
    struct conn *c;
    size_t len = 24;
    char *p;

    if (!accepting(r) || argc < 1 || (c = r->conn) == NULL)
        goto fail;
    for (int i = 0; i != argc; ++i) {
        size_t l = argvlen != NULL ? argvlen[i] : strlen(argv[i]);
        if (l > AOR_REDIS_MAX_OUTPUT_BYTES || len > AOR_REDIS_MAX_OUTPUT_BYTES)
            goto fail;
        len += 24 + l + 2;
    }
    if (forbidden_name(argv[0], argvlen != NULL ? argvlen[0] : strlen(argv[0])) || out_reserve(c, len) != 0 ||
        (cmd = new_cmd(r, CMD_USER, cb, data)) == NULL)
        goto fail;
    cmd->evalsha = (argvlen != NULL ? argvlen[0] : strlen(argv[0])) == 7 && strncasecmp(argv[0], "evalsha", 7) == 0;
    p = aor_redis_put_count(c->out + c->out_len, '*', (size_t)argc);
    for (int i = 0; i != argc; ++i) {
        size_t l = argvlen != NULL ? argvlen[i] : strlen(argv[i]);
        p = aor_redis_put_count(p, '$', l);
        memcpy(p, argv[i], l);
        p += l;
        *p++ = '\r';
        *p++ = '\n';
    }
    c->out_len = (size_t)(p - c->out);
    fifo_push(r, cmd);
    flush_later(r);
    return cmd;
fail:
    count_error();
    return NULL;
}

struct aor_redis_cmd *aor_redis_command_resp(struct aor_redis *r, aor_redis_cb cb, void *data, int argc, const char *name,
                                             size_t name_len, const struct iovec *rest, size_t nrest)
{
    struct aor_redis_cmd *cmd;
    struct conn *c;
    size_t len = 2 * 24 + name_len + 2;
    char *p;

    if (!accepting(r) || argc < 1 || (c = r->conn) == NULL || name_len > 64)
        goto fail;
    for (size_t i = 0; i != nrest; ++i) {
        if (rest[i].iov_len > AOR_REDIS_MAX_OUTPUT_BYTES || len > AOR_REDIS_MAX_OUTPUT_BYTES)
            goto fail;
        len += rest[i].iov_len;
    }
    if (forbidden_name(name, name_len) || out_reserve(c, len) != 0 || (cmd = new_cmd(r, CMD_USER, cb, data)) == NULL)
        goto fail;
    cmd->evalsha = name_len == 7 && strncasecmp(name, "evalsha", 7) == 0;
    p = aor_redis_put_count(c->out + c->out_len, '*', (size_t)argc);
    p = aor_redis_put_count(p, '$', name_len);
    memcpy(p, name, name_len);
    p += name_len;
    *p++ = '\r';
    *p++ = '\n';
    for (size_t i = 0; i != nrest; ++i) {
        memcpy(p, rest[i].iov_base, rest[i].iov_len);
        p += rest[i].iov_len;
    }
    c->out_len = (size_t)(p - c->out);
    fifo_push(r, cmd);
    flush_later(r);
    return cmd;
fail:
    count_error();
    return NULL;
}

void aor_redis_sha1_hex(const char *body, char sha[41])
{
    static const char digits[] = "0123456789abcdef";
    unsigned char md[20];
    unsigned int n = 0;

    sha[0] = '\0';
    if (EVP_Digest(body, strlen(body), md, &n, EVP_sha1(), NULL) != 1 || n != 20)
        return;
    for (int i = 0; i != 20; ++i) {
        sha[2 * i] = digits[md[i] >> 4];
        sha[2 * i + 1] = digits[md[i] & 15];
    }
    sha[40] = '\0';
}

int aor_redis_cmd_sent(const struct aor_redis_cmd *cmd)
{
    return cmd != NULL && cmd->sent;
}

void aor_redis_cancel(struct aor_redis_cmd *cmd)
{
    if (cmd != NULL)
        cmd->cb = NULL;
}
