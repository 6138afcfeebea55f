/* accesslog.c — see accesslog.h */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/time.h>
#include "accesslog.h"
#include "config.h"
#include "log.h"
#include "request.h"
#include "server.h"

#define BATCH_BYTES 32768
#define LINE_MAX_BYTES 4096
#define BUFFER_BYTES (1024 * 1024) /* per worker, while stdout's reader stalls; then lines are dropped */

struct aor_accesslog {
    uv_timer_t timer;
    time_t stamp_sec; /* the second `stamp` was formatted for */
    char stamp[32];
    size_t len;
    int stalled; /* the last write found the pipe full: wait for the timer before trying again */
    char buf[BUFFER_BYTES + LINE_MAX_BYTES];
};

/* writes what stdout takes without waiting (the server made it non-blocking); keeps the rest */
static void flush_some(struct aor_accesslog *log)
{
    size_t off = 0;

    log->stalled = 0;
    while (off < log->len) {
        ssize_t n = write(STDOUT_FILENO, log->buf + off, log->len - off);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            log->stalled = 1;
            break;
        }
        off = log->len; /* stdout gone: the log is lost, the service is not */
    }
    memmove(log->buf, log->buf + off, log->len - off);
    log->len -= off;
}

void aor_accesslog_flush(struct aor_accesslog *log)
{
    flush_some(log);
}

static void on_timer(uv_timer_t *t)
{
    flush_some(t->data);
}

struct aor_accesslog *aor_accesslog_create(uv_loop_t *loop)
{
    struct aor_accesslog *log = malloc(sizeof(*log));

    if (log == NULL)
        return NULL;
    log->len = 0;
    log->stamp_sec = 0;
    uv_timer_init(loop, &log->timer);
    log->timer.data = log;
    uv_timer_start(&log->timer, on_timer, 100, 100);
    uv_unref((uv_handle_t *)&log->timer);
    return log;
}

static void on_closed(uv_handle_t *h)
{
    free(h->data);
}

void aor_accesslog_destroy(struct aor_accesslog *log)
{
    /* the loop is over: wait for a slow reader, but no more than a second in all */
    for (int waited = 0; waited < 10; ++waited) {
        struct pollfd p = {STDOUT_FILENO, POLLOUT, 0};
        flush_some(log);
        if (!log->stalled)
            break;
        poll(&p, 1, 100);
    }
    if (log->len != 0)
        __atomic_add_fetch(&aor_log_dropped_total[1], 1, __ATOMIC_RELAXED);
    uv_timer_stop(&log->timer);
    uv_close((uv_handle_t *)&log->timer, on_closed);
}

/* appends to one line, bounded; `overflow` drops the line rather than cut it */
struct line {
    char *p, *end;
    int overflow;
};

static void put(struct line *l, const char *s, size_t n)
{
    if ((size_t)(l->end - l->p) < n) {
        l->overflow = 1;
        return;
    }
    memcpy(l->p, s, n);
    l->p += n;
}

#define PUT_LIT(l, lit) put((l), (lit), sizeof(lit) - 1)

static void put_str(struct line *l, const char *s)
{
    if (s != NULL)
        put(l, s, strlen(s));
}

/* JSON string content: quotes, backslashes and control bytes escaped */
static void put_esc(struct line *l, const char *s)
{
    static const char hex[] = "0123456789abcdef";

    for (; s != NULL && *s != '\0'; ++s) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            put(l, e, 2);
        } else if (c < 0x20 || c == 0x7f) {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            put(l, e, 6);
        } else {
            put(l, (const char *)&c, 1);
        }
    }
}

/* like put_esc, for bytes a client chose (user agent, path): at most `max` of them, and bytes
 * outside printable ASCII as \u00XX so the line stays valid UTF-8 JSON */
static void put_esc_client(struct line *l, const char *s)
{
    static const char hex[] = "0123456789abcdef";

    for (; s != NULL && *s != '\0'; ++s) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            put(l, e, 2);
        } else if (c < 0x20 || c >= 0x7f) {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            put(l, e, 6);
        } else {
            put(l, (const char *)&c, 1);
        }
    }
}

static void put_int(struct line *l, int64_t v)
{
    char buf[24], *q = buf + sizeof(buf);
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;

    do {
        *--q = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    if (v < 0)
        *--q = '-';
    put(l, q, (size_t)(buf + sizeof(buf) - q));
}

/* milliseconds between two monotonic stamps with three decimals; 0.000 when `from` is unset */
static void put_ms(struct line *l, uint64_t from_ns, uint64_t to_ns)
{
    uint64_t us = from_ns == 0 || to_ns < from_ns ? 0 : (to_ns - from_ns) / 1000;
    char frac[4] = {'.', (char)('0' + us % 1000 / 100), (char)('0' + us % 100 / 10), (char)('0' + us % 10)};

    put_int(l, (int64_t)(us / 1000));
    put(l, frac, 4);
}

/* one line's fields: a data-plane request's, or a control endpoint's (most left empty) */
struct entry {
    const char *id, *tenant, *auth, *subject, *client_id, *key_id, *method, *deployment, *backend, *error;
    unsigned attempts;
    int status, stream;
    const char *usage; /* "reported", "estimated" or "" */
    int64_t prompt, completion, total;
    uint64_t started_ns, upstream_ns, first_byte_ns;
    const char *backend_request_id;            /* validated to [A-Za-z0-9._:-] like id; NULL for none */
    const struct aor_accesslog_client *client; /* NULL: fields left empty */
};

/* hand-rolled rather than one snprintf: this runs once per request and snprintf cost
 * about 10k instructions of it (bench/README.md) */
static void write_entry(struct aor_accesslog *log, const struct entry *e)
{
    struct line l = {log->buf + log->len, log->buf + log->len + LINE_MAX_BYTES, 0};

    if (log->len > BUFFER_BYTES) { /* the reader stalled and the buffer is full */
        __atomic_add_fetch(&aor_log_dropped_total[1], 1, __ATOMIC_RELAXED);
        return;
    }
    struct timespec now;
    uint64_t now_ns = aor_mono_ns();
    char ms[5];

    clock_gettime(CLOCK_REALTIME, &now);
    if (now.tv_sec != log->stamp_sec) {
        struct tm tm;
        time_t secs = now.tv_sec;
        gmtime_r(&secs, &tm);
        strftime(log->stamp, sizeof(log->stamp), "%Y-%m-%dT%H:%M:%S", &tm);
        log->stamp_sec = now.tv_sec;
    }
    ms[0] = '.';
    ms[1] = (char)('0' + now.tv_nsec / 100000000);
    ms[2] = (char)('0' + now.tv_nsec / 10000000 % 10);
    ms[3] = (char)('0' + now.tv_nsec / 1000000 % 10);
    ms[4] = 'Z';
    /* id and deployment are validated to [A-Za-z0-9._:-]; identities come from tokens: escaped */
    PUT_LIT(&l, "{\"time\":\"");
    put_str(&l, log->stamp);
    put(&l, ms, 5);
    PUT_LIT(&l, "\",\"request_id\":\"");
    put_str(&l, e->id);
    PUT_LIT(&l, "\",\"tenant\":\"");
    put_esc(&l, e->tenant);
    PUT_LIT(&l, "\",\"auth\":\"");
    put_str(&l, e->auth);
    PUT_LIT(&l, "\",\"subject\":\"");
    put_esc(&l, e->subject);
    PUT_LIT(&l, "\",\"client_id\":\"");
    put_esc(&l, e->client_id);
    PUT_LIT(&l, "\",\"key_id\":\"");
    put_str(&l, e->key_id);
    PUT_LIT(&l, "\",\"method\":\"");
    put_str(&l, e->method);
    PUT_LIT(&l, "\",\"path\":\"");
    if (e->client != NULL)
        put_esc_client(&l, e->client->path);
    PUT_LIT(&l, "\",\"client\":\"");
    if (e->client != NULL)
        put_str(&l, e->client->address);
    PUT_LIT(&l, "\",\"user_agent\":\"");
    if (e->client != NULL)
        put_esc_client(&l, e->client->user_agent);
    PUT_LIT(&l, "\",\"deployment\":\"");
    put_str(&l, e->deployment);
    PUT_LIT(&l, "\",\"backend\":\"");
    put_str(&l, e->backend);
    PUT_LIT(&l, "\",\"backend_request_id\":\"");
    put_str(&l, e->backend_request_id);
    PUT_LIT(&l, "\",\"attempts\":");
    put_int(&l, e->attempts);
    PUT_LIT(&l, ",\"status\":");
    put_int(&l, e->status);
    if (e->stream)
        PUT_LIT(&l, ",\"stream\":true");
    else
        PUT_LIT(&l, ",\"stream\":false");
    if (e->usage != NULL && e->usage[0] != '\0') {
        PUT_LIT(&l, ",\"usage\":\"");
        put_str(&l, e->usage);
        PUT_LIT(&l, "\"");
    }
    PUT_LIT(&l, ",\"prompt_tokens\":");
    put_int(&l, e->prompt);
    PUT_LIT(&l, ",\"completion_tokens\":");
    put_int(&l, e->completion);
    PUT_LIT(&l, ",\"total_tokens\":");
    put_int(&l, e->total);
    PUT_LIT(&l, ",\"duration_ms\":");
    put_ms(&l, e->started_ns, now_ns);
    PUT_LIT(&l, ",\"upstream_ms\":");
    put_ms(&l, e->upstream_ns, now_ns);
    PUT_LIT(&l, ",\"ttfb_ms\":");
    put_ms(&l, e->started_ns, e->first_byte_ns);
    PUT_LIT(&l, ",\"error\":\"");
    put_esc(&l, e->error);
    PUT_LIT(&l, "\"}\n");
    if (l.overflow)
        return;
    log->len = (size_t)(l.p - log->buf);
    if (log->len >= BATCH_BYTES && !log->stalled)
        flush_some(log);
}

void aor_accesslog_write(struct aor_accesslog *log, const struct aor_request *ar)
{
    struct entry e = {ar->id,
                      ar->auth.tenant,
                      ar->auth.method != NULL ? ar->auth.method : "none",
                      ar->auth.subject,
                      ar->auth.client_id,
                      ar->auth.key_id,
                      ar->method,
                      ar->deployment,
                      ar->current >= 0 ? ar->cand_backend[ar->current]->name : "",
                      ar->last_error,
                      ar->attempts,
                      ar->final_status,
                      ar->stream,
                      ar->adm.usage_estimated ? "estimated"
                      : ar->usage.found       ? "reported"
                                              : "",
                      ar->usage.prompt,
                      ar->usage.completion,
                      ar->usage.total,
                      ar->started_ns,
                      ar->upstream_started_ns,
                      ar->first_byte_ns,
                      ar->backend_request_id,
                      &ar->client};
    write_entry(log, &e);
}

/* a bounded copy of `len` bytes at `s` into `dst` (cap bytes with its NUL); NULs inside become '?' */
static void copy_bounded(char *dst, size_t cap, const char *s, size_t len)
{
    if (len > cap - 1)
        len = cap - 1;
    for (size_t i = 0; i < len; ++i)
        dst[i] = s[i] != '\0' ? s[i] : '?';
    dst[len] = '\0';
}

void aor_accesslog_capture(struct aor_accesslog_client *c, h2o_req_t *req)
{
    struct sockaddr_storage ss;
    socklen_t len = 0;
    const char *q;
    ssize_t i;

    c->address[0] = '\0';
    if (req->conn != NULL && req->conn->callbacks->get_peername != NULL)
        len = req->conn->callbacks->get_peername(req->conn, (struct sockaddr *)&ss);
    if (len != 0 && ss.ss_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, c->address, sizeof(c->address));
    else if (len != 0 && ss.ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, c->address, sizeof(c->address));
    q = req->path.base != NULL ? memchr(req->path.base, '?', req->path.len) : NULL;
    copy_bounded(c->path, sizeof(c->path), req->path.base != NULL ? req->path.base : "",
                 q != NULL ? (size_t)(q - req->path.base) : req->path.len);
    i = h2o_find_header(&req->headers, H2O_TOKEN_USER_AGENT, -1);
    if (i >= 0)
        copy_bounded(c->user_agent, sizeof(c->user_agent), req->headers.entries[i].value.base, req->headers.entries[i].value.len);
    else
        c->user_agent[0] = '\0';
}

void aor_accesslog_write_req(struct aor_accesslog *log, h2o_req_t *req, const char *id, const char *error, uint64_t started_ns)
{
    struct aor_accesslog_client c;
    char method[16];
    size_t k;
    struct entry e = {.id = id,
                      .tenant = "",
                      .auth = "none",
                      .subject = "",
                      .client_id = "",
                      .key_id = "",
                      .method = method,
                      .deployment = "",
                      .backend = "",
                      .error = error != NULL ? error : "",
                      .status = req->res.status,
                      .started_ns = started_ns,
                      .client = &c};

    for (k = 0; k != req->method.len && k + 1 < sizeof(method); ++k) /* a token; keep the line JSON-safe */
        method[k] = (req->method.base[k] >= 'A' && req->method.base[k] <= 'Z') ? req->method.base[k] : '?';
    method[k] = '\0';
    aor_accesslog_capture(&c, req);
    write_entry(log, &e);
}
