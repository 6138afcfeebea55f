/*
 * redis.c — see redis.h.
 *
 * hiredis 0.14 keeps every command's callback in a FIFO and calls each exactly once: with the
 * reply, or with NULL when the context is freed (by us, or by itself after an I/O error). We
 * keep our own FIFO of the same commands in the same order, so that the oldest pending command
 * carries the earliest deadline and one timer per connection serves them all. A cancelled
 * command stays in both FIFOs as a tombstone (cb NULL) until hiredis lets go of its pointer.
 *
 * Teardown rules we rely on (hiredis 0.14 async.c): redisAsyncFree() from outside a hiredis
 * callback frees at once, running the pending callbacks; from inside a reply callback it is
 * deferred until that callback returns. It must not be called from the connect or disconnect
 * callbacks, where hiredis is already tearing the context down itself.
 *
 * The libuv glue is ours rather than hiredis' adapters/libuv.h: that one drops poll errors
 * (libuv reports POLLERR as a status and stops the handle), so a refused connect or a reset
 * connection would go unnoticed until a deadline.
 */
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include "log.h"
#include "redis.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000
#define MAX_REPLY_BYTES (1024 * 1024) /* a reply still being read (a bulk string) larger than this drops the connection */
#define MAX_REPLY_OBJECTS 65536       /* elements of one reply, nested ones included (the router's largest: an MGET) */

const char aor_redis_err_timeout[] = "redis command timed out";
const char aor_redis_err_disconnected[] = "redis connection lost";
const char aor_redis_err_reply[] = "redis error reply";

uint64_t aor_redis_errors_total;

enum conn_state {
    ST_DOWN,       /* no connection; retry_timer may be pending */
    ST_RESOLVING,  /* uv_getaddrinfo in flight */
    ST_CONNECTING, /* context exists; TCP connect and/or AUTH/SELECT/PING not answered yet */
    ST_UP,         /* PING answered */
};

enum cmd_kind { CMD_USER, CMD_HANDSHAKE, CMD_HANDSHAKE_LAST };

/* owned by this module from send until hiredis calls on_reply; the caller's handle meanwhile */
struct aor_redis_cmd {
    struct aor_redis *r;
    aor_redis_cb cb; /* NULL: cancelled or internal */
    void *data;
    uint64_t deadline; /* uv_now() ms */
    struct aor_redis_cmd *next;
    enum cmd_kind kind;
};

/* freed when both timers are closed and no getaddrinfo is in flight (see maybe_free) */
struct aor_redis {
    uv_loop_t *loop;
    struct aor_redis_url url;
    char *password; /* effective AUTH password; NULL = none */
    uint64_t timeout_ms;
    enum conn_state state;
    redisAsyncContext *ac;             /* current context, NULL when none */
    struct aor_redis_cmd *head, *tail; /* what hiredis holds for `ac`, oldest first */
    const char *fail_err;              /* given to the commands of a context being torn down */
    unsigned failures;                 /* consecutive failed attempts; 0 = the last connection was healthy */
    int ever_up;
    uv_timer_t deadline_timer; /* armed for the oldest command's deadline (lazily) */
    uv_timer_t retry_timer;    /* reconnect backoff */
    uv_getaddrinfo_t gai;
    int gai_active;
    int reconnect_after_gai; /* reconfigured while resolving the old host: start over when it ends */
    int open_handles;
    int destroyed;
    uint64_t rng;
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
    if (url == NULL || strncmp(url, "redis://", 8) != 0)
        return -1;
    auth = url + 8;
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

/* ---- the libuv glue hiredis calls to watch its socket ---- */

struct glue {
    uv_poll_t poll;
    redisAsyncContext *ac; /* NULL once hiredis cleaned up */
    int events;
    size_t objects; /* made for the reply being parsed */
};

/*
 * hiredis 0.14 has no bound on a reply: a bulk string waits whole in the reader's buffer and an
 * array's element table is allocated at its header, whatever length the server claims. Our
 * reply-object functions wrap hiredis' own (taken from the reader) and refuse an object past
 * MAX_REPLY_OBJECTS in one reply: the reader then fails ("out of memory") and the connection is
 * dropped. The buffer's own bound is checked after each read (glue_poll_cb).
 */
static redisReplyObjectFunctions *hiredis_fn; /* the same table for every reader */

static redisReplyObjectFunctions *hiredis_functions(void)
{
    return __atomic_load_n(&hiredis_fn, __ATOMIC_RELAXED);
}

static int reply_object_ok(const redisReadTask *t, size_t claimed)
{
    struct glue *g = t->privdata;

    /* the reply itself, then every array's claimed length (its elements are counted there) */
    if (t->parent == NULL)
        g->objects = 1;
    g->objects += claimed;
    if (g->objects <= MAX_REPLY_OBJECTS)
        return 1;
    AOR_LOG(AOR_LOG_WARN, "redis", "a reply with more than %d elements; dropping the connection", MAX_REPLY_OBJECTS);
    return 0;
}

static void *bounded_string(const redisReadTask *t, char *str, size_t len)
{
    return reply_object_ok(t, 0) ? hiredis_functions()->createString(t, str, len) : NULL;
}

static void *bounded_array(const redisReadTask *t, int elements)
{
    return reply_object_ok(t, elements > 0 ? (size_t)elements : 0) ? hiredis_functions()->createArray(t, elements) : NULL;
}

static void *bounded_integer(const redisReadTask *t, long long v)
{
    return reply_object_ok(t, 0) ? hiredis_functions()->createInteger(t, v) : NULL;
}

static void *bounded_nil(const redisReadTask *t)
{
    return reply_object_ok(t, 0) ? hiredis_functions()->createNil(t) : NULL;
}

static void bounded_free(void *obj)
{
    hiredis_functions()->freeObject(obj);
}

static redisReplyObjectFunctions bounded_fn = {bounded_string, bounded_array, bounded_integer, bounded_nil, bounded_free};

static void conn_kill(struct aor_redis *r, const char *err, const char *detail);

static void glue_poll_cb(uv_poll_t *h, int status, int events)
{
    struct glue *g = h->data;

    /* on POLLERR libuv stops the handle and gives no events: let hiredis read or write the
     * socket, which is how it learns about a refused connect or a reset */
    if (status < 0)
        events = g->events != 0 ? g->events : UV_READABLE;
    if (g->ac != NULL && (events & UV_READABLE)) {
        redisAsyncHandleRead(g->ac);
        if (g->ac != NULL && g->ac->c.reader->len - g->ac->c.reader->pos > MAX_REPLY_BYTES) {
            struct aor_redis *r = g->ac->data;
            if (r->ac == g->ac) /* else: a context given up on, already being freed */
                conn_kill(r, aor_redis_err_disconnected, "a reply over 1 MiB (a bulk string no command of ours asks for)");
        }
    }
    if (g->ac != NULL && (events & UV_WRITABLE))
        redisAsyncHandleWrite(g->ac);
    if (status < 0 && g->ac != NULL && g->events != 0)
        uv_poll_start(&g->poll, g->events, glue_poll_cb);
}

static void glue_update(struct glue *g)
{
    if (g->events != 0)
        uv_poll_start(&g->poll, g->events, glue_poll_cb);
    else
        uv_poll_stop(&g->poll);
}

static void glue_add_read(void *p)
{
    struct glue *g = p;
    g->events |= UV_READABLE;
    glue_update(g);
}

static void glue_del_read(void *p)
{
    struct glue *g = p;
    g->events &= ~UV_READABLE;
    glue_update(g);
}

static void glue_add_write(void *p)
{
    struct glue *g = p;
    g->events |= UV_WRITABLE;
    glue_update(g);
}

static void glue_del_write(void *p)
{
    struct glue *g = p;
    g->events &= ~UV_WRITABLE;
    glue_update(g);
}

static void glue_closed(uv_handle_t *h)
{
    free(h->data);
}

static void glue_cleanup(void *p)
{
    struct glue *g = p;
    g->ac = NULL;
    uv_close((uv_handle_t *)&g->poll, glue_closed);
}

static int glue_attach(redisAsyncContext *ac, uv_loop_t *loop)
{
    struct glue *g = calloc(1, sizeof(*g));

    if (g == NULL)
        return -1;
    if (uv_poll_init_socket(loop, &g->poll, ac->c.fd) != 0) {
        free(g);
        return -1;
    }
    g->poll.data = g;
    g->ac = ac;
    /* hiredis' own functions, bounded (the table is the same for every reader: no lock needed to
     * store the same pointer twice) */
    if (ac->c.reader->fn != &bounded_fn) {
        __atomic_store_n(&hiredis_fn, ac->c.reader->fn, __ATOMIC_RELAXED);
        ac->c.reader->fn = &bounded_fn;
    }
    ac->c.reader->privdata = g;
    ac->ev.data = g;
    ac->ev.addRead = glue_add_read;
    ac->ev.delRead = glue_del_read;
    ac->ev.addWrite = glue_add_write;
    ac->ev.delWrite = glue_del_write;
    ac->ev.cleanup = glue_cleanup;
    return 0;
}

/* ---- connection state ---- */

static void start_connect(struct aor_redis *r);
static void on_reply(redisAsyncContext *ac, void *reply, void *privdata);

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

/*
 * The current attempt or connection is over. Idempotent per attempt: every pending command of
 * a dying context reports here. Does not free the context (the caller or hiredis does).
 */
static void conn_lost(struct aor_redis *r, const char *err, const char *detail)
{
    uint64_t delay = 0;
    int was_up = r->state == ST_UP;

    if (r->state == ST_DOWN)
        return;
    r->state = ST_DOWN;
    r->ac = NULL;
    r->fail_err = err;
    count_error();
    /* a working connection that dropped is rebuilt at once (commands queue meanwhile); a stuck
     * one or a failed attempt waits, and commands are refused until Redis answers again */
    if (was_up && err != aor_redis_err_timeout)
        r->failures = 0;
    else
        ++r->failures;
    if (r->failures <= 1)
        AOR_LOG(AOR_LOG_WARN, "redis", "%s:%u: %s%s%s", r->url.host, (unsigned)r->url.port,
                was_up ? "connection lost" : "connection failed", detail != NULL ? ": " : "", detail != NULL ? detail : "");
    else
        AOR_LOG(AOR_LOG_DEBUG, "redis", "%s:%u: attempt %u failed%s%s", r->url.host, (unsigned)r->url.port, r->failures,
                detail != NULL ? ": " : "", detail != NULL ? detail : "");
    if (r->destroyed)
        return;
    if (r->failures != 0) {
        unsigned shift = r->failures - 1 < 8 ? r->failures - 1 : 8;
        delay = (uint64_t)BACKOFF_MIN_MS << shift;
        if (delay > BACKOFF_MAX_MS)
            delay = BACKOFF_MAX_MS;
        delay = delay * 3 / 4 + next_random(r) % (delay / 2 + 1); /* ±25% so that workers do not reconnect in step */
    }
    uv_timer_start(&r->retry_timer, on_retry, delay, 0);
}

/* gives up on the current context; safe from timers and from reply callbacks (hiredis defers the free) */
static void conn_kill(struct aor_redis *r, const char *err, const char *detail)
{
    redisAsyncContext *ac = r->ac;

    conn_lost(r, err, detail);
    if (ac != NULL)
        redisAsyncFree(ac);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct aor_redis *r = ac->data;

    /* on failure hiredis frees the context right after this returns */
    if (status != REDIS_OK && ac == r->ac)
        conn_lost(r, aor_redis_err_disconnected, ac->errstr);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct aor_redis *r = ac->data;

    if (ac == r->ac)
        conn_lost(r, aor_redis_err_disconnected, ac->errstr);
}

static void on_deadline(uv_timer_t *t)
{
    struct aor_redis *r = t->data;
    uint64_t now = uv_now(r->loop);
    char detail[64];

    if (r->head == NULL)
        return;
    if (r->head->deadline > now) {
        uv_timer_start(t, on_deadline, r->head->deadline - now, 0);
        return;
    }
    snprintf(detail, sizeof(detail), "no reply within %llu ms", (unsigned long long)r->timeout_ms);
    conn_kill(r, aor_redis_err_timeout, detail);
}

static void fifo_push(struct aor_redis *r, struct aor_redis_cmd *cmd)
{
    cmd->next = NULL;
    if (r->tail != NULL)
        r->tail->next = cmd;
    else
        r->head = cmd;
    r->tail = cmd;
    if (!uv_is_active((uv_handle_t *)&r->deadline_timer))
        uv_timer_start(&r->deadline_timer, on_deadline, r->timeout_ms, 0);
}

static void fifo_remove(struct aor_redis *r, struct aor_redis_cmd *cmd)
{
    struct aor_redis_cmd **pp = &r->head, *prev = NULL;

    /* hiredis answers in order, so this is the head; the walk is only a safety net */
    while (*pp != NULL && *pp != cmd) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (*pp == NULL)
        return;
    *pp = cmd->next;
    if (r->tail == cmd)
        r->tail = prev;
}

/* SUBSCRIBE and MONITOR change what hiredis expects on the wire; not for a shared connection */
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

static struct aor_redis_cmd *send_formatted(struct aor_redis *r, enum cmd_kind kind, aor_redis_cb cb, void *data, const char *buf,
                                            size_t len)
{
    struct aor_redis_cmd *cmd;

    if (r->ac == NULL || forbidden_command(buf, len) || (cmd = malloc(sizeof(*cmd))) == NULL)
        return NULL;
    cmd->r = r;
    cmd->cb = cb;
    cmd->data = data;
    cmd->kind = kind;
    cmd->deadline = uv_now(r->loop) + r->timeout_ms;
    if (redisAsyncFormattedCommand(r->ac, on_reply, cmd, buf, len) != REDIS_OK) {
        free(cmd);
        return NULL;
    }
    fifo_push(r, cmd);
    return cmd;
}

static int send_handshake(struct aor_redis *r, enum cmd_kind kind, int argc, const char **argv)
{
    char *buf = NULL;
    int len = redisFormatCommandArgv(&buf, argc, argv, NULL);
    struct aor_redis_cmd *cmd = NULL;

    if (len > 0)
        cmd = send_formatted(r, kind, NULL, NULL, buf, (size_t)len);
    if (buf != NULL) {
        explicit_bzero(buf, (size_t)(len > 0 ? len : 0)); /* it may hold the password */
        redisFreeCommand(buf);
    }
    return cmd != NULL ? 0 : -1;
}

static void connect_to(struct aor_redis *r, const char *ip)
{
    redisAsyncContext *ac;
    char db[16];

    r->state = ST_CONNECTING;
    if ((ac = redisAsyncConnect(ip, r->url.port)) == NULL) {
        conn_lost(r, aor_redis_err_disconnected, "out of memory");
        return;
    }
    if (ac->err != 0) {
        conn_lost(r, aor_redis_err_disconnected, ac->errstr);
        redisAsyncFree(ac);
        return;
    }
    ac->data = r;
    if (glue_attach(ac, r->loop) != 0) {
        conn_lost(r, aor_redis_err_disconnected, "cannot watch the socket");
        redisAsyncFree(ac);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    redisEnableKeepAlive(&ac->c); /* 15 s probes: a peer that vanished without a FIN is noticed even when idle */
    r->ac = ac;
    /* hiredis buffers these until the socket connects, ahead of any user command */
    if (r->password != NULL) {
        const char *with_user[] = {"AUTH", r->url.user, r->password}, *without[] = {"AUTH", r->password};
        if ((r->url.user != NULL ? send_handshake(r, CMD_HANDSHAKE, 3, with_user) : send_handshake(r, CMD_HANDSHAKE, 2, without)) !=
            0)
            goto fail;
    }
    if (r->url.db != 0) {
        snprintf(db, sizeof(db), "%u", r->url.db);
        if (send_handshake(r, CMD_HANDSHAKE, 2, (const char *[]){"SELECT", db}) != 0)
            goto fail;
    }
    if (send_handshake(r, CMD_HANDSHAKE_LAST, 1, (const char *[]){"PING"}) != 0)
        goto fail;
    return;
fail:
    conn_kill(r, aor_redis_err_disconnected, "cannot queue the handshake");
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct aor_redis *r = req->data;
    const struct addrinfo *ai, *pick = NULL;
    char ip[INET6_ADDRSTRLEN];
    int err = -1;

    r->gai_active = 0;
    if (r->destroyed) {
        uv_freeaddrinfo(res);
        if (r->open_handles == 0)
            free(r);
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
        if (pick != NULL)
            err = uv_ip_name(pick->ai_addr, ip, sizeof(ip));
    }
    uv_freeaddrinfo(res);
    if (r->reconnect_after_gai) { /* resolved the old host: resolve the new one */
        r->reconnect_after_gai = 0;
        start_connect(r);
        return;
    }
    if (err != 0) {
        conn_lost(r, aor_redis_err_disconnected, status != 0 ? uv_strerror(status) : "no address");
        return;
    }
    connect_to(r, ip);
}

static void start_connect(struct aor_redis *r)
{
    unsigned char buf[sizeof(struct in6_addr)];
    struct addrinfo hints;

    if (inet_pton(AF_INET, r->url.host, buf) == 1 || inet_pton(AF_INET6, r->url.host, buf) == 1) {
        connect_to(r, r->url.host);
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

static void handshake_reply(struct aor_redis *r, redisAsyncContext *ac, enum cmd_kind kind, const redisReply *reply,
                            const char *err)
{
    if (r->destroyed || ac != r->ac)
        return; /* a context already given up on */
    if (err != NULL) {
        /* the server's words (e.g. WRONGPASS, LOADING) never contain the password */
        conn_kill(r, aor_redis_err_disconnected, reply != NULL ? reply->str : err);
        return;
    }
    if (kind == CMD_HANDSHAKE_LAST) {
        if (r->failures != 0 || !r->ever_up)
            AOR_LOG(AOR_LOG_INFO, "redis", "%s:%u: connected (db %u)", r->url.host, (unsigned)r->url.port, r->url.db);
        r->state = ST_UP;
        r->failures = 0;
        r->ever_up = 1;
    }
}

static void on_reply(redisAsyncContext *ac, void *reply_, void *privdata)
{
    struct aor_redis_cmd *cmd = privdata;
    struct aor_redis *r = cmd->r;
    const redisReply *reply = reply_;
    const char *err = NULL;

    fifo_remove(r, cmd);
    if (reply == NULL) {
        /* hiredis is freeing the context: after an I/O error if it is still our current one */
        if (ac == r->ac)
            conn_lost(r, aor_redis_err_disconnected, ac->errstr);
        err = r->fail_err != NULL ? r->fail_err : aor_redis_err_disconnected;
    } else if (reply->type == REDIS_REPLY_ERROR) {
        err = aor_redis_err_reply;
    }
    if (cmd->kind != CMD_USER) {
        handshake_reply(r, ac, cmd->kind, reply, err);
    } else if (cmd->cb != NULL) {
        aor_redis_cb cb = cmd->cb;
        cmd->cb = NULL;
        if (err != NULL)
            count_error();
        cb(cmd->data, reply, err);
    }
    free(cmd);
}

/* ---- public ---- */

static void on_handle_closed(uv_handle_t *h)
{
    struct aor_redis *r = h->data;

    if (--r->open_handles == 0 && !r->gai_active)
        free(r);
}

struct aor_redis *aor_redis_create(uv_loop_t *loop, const char *url, const char *password, uint64_t command_timeout_ms)
{
    struct aor_redis *r = calloc(1, sizeof(*r));

    if (r == NULL)
        return NULL;
    if (aor_redis_url_parse(url, &r->url) != 0) {
        free(r);
        return NULL;
    }
    if (password != NULL) {
        if ((r->password = strdup(password)) == NULL) {
            aor_redis_url_clear(&r->url);
            free(r);
            return NULL;
        }
    } else if (r->url.password != NULL) {
        r->password = r->url.password; /* shared: freed with the URL */
    }
    r->loop = loop;
    r->timeout_ms = command_timeout_ms != 0 ? command_timeout_ms : 1;
    r->state = ST_DOWN;
    if (getrandom(&r->rng, sizeof(r->rng), GRND_NONBLOCK) != sizeof(r->rng) || r->rng == 0)
        r->rng = (uint64_t)(uintptr_t)r ^ uv_hrtime() ^ 0x9e3779b97f4a7c15ull;
    uv_timer_init(loop, &r->deadline_timer);
    uv_timer_init(loop, &r->retry_timer);
    r->deadline_timer.data = r;
    r->retry_timer.data = r;
    r->open_handles = 2;
    start_connect(r);
    return r;
}

void aor_redis_destroy(struct aor_redis *r)
{
    redisAsyncContext *ac;

    if (r == NULL)
        return;
    r->destroyed = 1;
    for (struct aor_redis_cmd *c = r->head; c != NULL; c = c->next)
        c->cb = NULL;
    if ((ac = r->ac) != NULL) {
        r->ac = NULL;
        r->state = ST_DOWN;
        r->fail_err = aor_redis_err_disconnected;
        redisAsyncFree(ac); /* runs every pending on_reply now: the tombstones go */
    }
    if (r->password != NULL && r->password != r->url.password) {
        explicit_bzero(r->password, strlen(r->password));
        free(r->password);
    }
    r->password = NULL;
    aor_redis_url_clear(&r->url);
    if (r->gai_active)
        uv_cancel((uv_req_t *)&r->gai); /* on_resolved still runs (ECANCELED) and frees r if last */
    uv_timer_stop(&r->deadline_timer);
    uv_timer_stop(&r->retry_timer);
    uv_close((uv_handle_t *)&r->deadline_timer, on_handle_closed);
    uv_close((uv_handle_t *)&r->retry_timer, on_handle_closed);
}

static int same_str(const char *a, const char *b)
{
    return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

int aor_redis_reconfigure(struct aor_redis *r, const char *url, const char *password)
{
    struct aor_redis_url u;
    char *pw = NULL;

    if (r == NULL || r->destroyed || aor_redis_url_parse(url, &u) != 0)
        return -1;
    if (same_str(r->url.host, u.host) && r->url.port == u.port && r->url.db == u.db && same_str(r->url.user, u.user) &&
        same_str(r->password, password != NULL ? password : u.password)) {
        aor_redis_url_clear(&u);
        return 0;
    }
    if (password != NULL && (pw = strdup(password)) == NULL) {
        aor_redis_url_clear(&u);
        return -1;
    }
    if (r->password != NULL && r->password != r->url.password) {
        explicit_bzero(r->password, strlen(r->password));
        free(r->password);
    }
    aor_redis_url_clear(&r->url);
    r->url = u;
    r->password = pw != NULL ? pw : r->url.password;
    AOR_LOG(AOR_LOG_INFO, "redis", "settings changed by a reload: reconnecting to %s:%u", r->url.host, (unsigned)r->url.port);
    /* the old connection goes now (its pending commands fail as disconnected, so their waiters
     * answer); the new one is tried at once, without the backoff of the old one's failures */
    switch (r->state) {
    case ST_UP:
    case ST_CONNECTING:
        conn_kill(r, aor_redis_err_disconnected, "reconfigured");
        break;
    case ST_RESOLVING:
        r->reconnect_after_gai = 1;
        return 0;
    case ST_DOWN:
        break;
    }
    r->failures = 0;
    uv_timer_start(&r->retry_timer, on_retry, 0, 0);
    return 0;
}

int aor_redis_is_up(const struct aor_redis *r)
{
    return r != NULL && r->state == ST_UP;
}

static int accepting(const struct aor_redis *r)
{
    return r != NULL && r->ac != NULL && (r->state == ST_UP || (r->state == ST_CONNECTING && r->failures == 0));
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

struct aor_redis_cmd *aor_redis_command_argv(struct aor_redis *r, aor_redis_cb cb, void *data, int argc, const char **argv,
                                             const size_t *argvlen)
{
    struct aor_redis_cmd *cmd = NULL;
    char *buf = NULL;
    int len;

    if (!accepting(r) || argc < 1) {
        count_error();
        return NULL;
    }
    len = redisFormatCommandArgv(&buf, argc, argv, argvlen);
    if (len > 0)
        cmd = send_formatted(r, CMD_USER, cb, data, buf, (size_t)len);
    if (buf != NULL)
        redisFreeCommand(buf);
    if (cmd == NULL)
        count_error();
    return cmd;
}

void aor_redis_cancel(struct aor_redis_cmd *cmd)
{
    if (cmd != NULL)
        cmd->cb = NULL;
}
