/*
 * aoai-mock — a mock Azure OpenAI backend for the integration tests, the demo and the
 * benchmark. One h2o context on one libuv loop serves HTTP/1.1 (keep-alive) and h2c on a
 * plain listener.
 *
 * Data plane: chat completions (JSON or SSE stream) and embeddings under
 * /openai/deployments/{d}/, /openai/v1/ and /v1/, in the Azure wire format, with simulated
 * x-ratelimit-remaining-* headers. Control plane under /_mock/: a behaviour switch
 * (status, retry headers, delays, stream pacing, mid-stream reset), a reset, and stats
 * that tests read to check what reached the backend. See tests/mocks/README.md.
 *
 * The non-streaming path allocates only from the request pool and never logs, so the mock
 * is not the bottleneck when the router is benchmarked against it.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <h2o.h>
#include <jansson.h>
#include <uv.h>

/* Limits: every buffer has a maximum, every knob a range. */
#define MAX_BODY_BYTES (64 * 1024 * 1024) /* request entity; h2o answers 413 above it */
#define MAX_MODEL_LEN 256                 /* deployment / model name echoed in replies */
#define MAX_DELAY_MS 600000               /* delay_ms */
#define MAX_INTERVAL_MS 60000             /* chunk_interval_ms */
#define MAX_CHUNKS 1000000                /* chunks */
#define MAX_HEADER_VALUE 256              /* retry_after, retry_after_ms */
#define IDLE_TIMEOUT_MS 120000            /* keep-alive idle (h1 request read, h2 idle) */
#define DEFAULT_WORDS 10                  /* completion words when max_tokens is absent or >= 16 */
#define EMBEDDING_DIMS 8

#define ERR_INVALID_REQUEST "invalid_request"

struct options {
    const char *host;
    int port;
    const char *name;
    int64_t tpm, rpm;
};

/*
 * The behaviour switch set by POST /_mock/behaviour. Strings are malloc'd and owned here;
 * a new switch (or /_mock/reset) frees and replaces the whole thing.
 */
struct behaviour {
    int active;           /* any field set */
    int status;           /* 0 or 200: normal replies */
    char *retry_after;    /* sent verbatim as retry-after, or NULL */
    char *retry_after_ms; /* sent verbatim as retry-after-ms, or NULL */
    char *body;           /* raw body for the status reply, or NULL */
    size_t body_len;
    /* data-plane requests the switch still applies to; -1 = until reset */
    long count;
    uint64_t delay_ms;
    uint64_t chunk_interval_ms;
    long chunks;             /* -1 = default word count */
    long reset_after_chunks; /* -1 = never */
};

/* The behaviour as one request sees it; strings copied into the request pool. */
struct plan {
    int status;
    h2o_iovec_t retry_after, retry_after_ms, body; /* base NULL = absent */
    uint64_t delay_ms, chunk_interval_ms;
    long chunks, reset_after_chunks;
};

/* The last data-plane request, copied into its own pool (cleared on each request). */
struct last_request {
    int present;
    h2o_mem_pool_t pool;
    h2o_iovec_t method, path, query; /* query.base NULL = none */
    h2o_iovec_t *names, *values;
    size_t num_headers;
    h2o_iovec_t body;
};

struct stats {
    uint64_t requests, completed, aborted, resets, active, connections;
};

/* Simulated per-minute budget behind x-ratelimit-remaining-*; window = wall-clock minute. */
struct ratelimit {
    int64_t minute;
    int64_t tokens_used, requests_used;
};

/*
 * Process state. The mock is one thread on one loop, so plain counters suffice; keeping
 * them in one struct makes what the handlers share visible in one place.
 */
static struct {
    struct options opt;
    uv_loop_t *loop;
    h2o_globalconf_t config;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    uv_tcp_t listener;
    uv_signal_t sigint, sigterm;
    struct behaviour behaviour;
    struct last_request last;
    struct stats stats;
    struct ratelimit rl;
    uint64_t seq;  /* request sequence, for ids */
    uint64_t seed; /* per-process seed, so ids differ between runs */
} mock;

/* ---- output buffer in the request pool ------------------------------------------------ */

/* A growable string in a pool; lives as long as the pool. */
struct out {
    h2o_mem_pool_t *pool;
    char *base;
    size_t len, cap;
};

static void out_init(struct out *o, h2o_mem_pool_t *pool, size_t cap)
{
    o->pool = pool;
    o->base = h2o_mem_alloc_pool(pool, cap);
    o->len = 0;
    o->cap = cap;
}

static void out_reserve(struct out *o, size_t extra)
{
    if (o->len + extra <= o->cap)
        return;
    size_t cap = o->cap * 2;
    while (cap < o->len + extra)
        cap *= 2;
    char *p = h2o_mem_alloc_pool(o->pool, cap);
    memcpy(p, o->base, o->len);
    o->base = p;
    o->cap = cap;
}

static void out_add(struct out *o, const char *s, size_t n)
{
    out_reserve(o, n);
    memcpy(o->base + o->len, s, n);
    o->len += n;
}

#define out_lit(o, s) out_add((o), (s), sizeof(s) - 1)

__attribute__((format(printf, 2, 3))) static void out_fmt(struct out *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(o->base + o->len, o->cap - o->len, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= o->cap - o->len) {
        out_reserve(o, (size_t)n + 1);
        va_start(ap, fmt);
        vsnprintf(o->base + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
    }
    o->len += (size_t)n;
}

/* Appends s as the inside of a JSON string (quotes not included). */
static void out_json_escaped(struct out *o, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    out_reserve(o, n * 6);
    char *d = o->base + o->len;
    for (size_t i = 0; i != n; ++i) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            *d++ = '\\';
            *d++ = (char)c;
        } else if (c < 0x20) {
            memcpy(d, "\\u00", 4);
            d[4] = hex[c >> 4];
            d[5] = hex[c & 15];
            d += 6;
        } else {
            *d++ = (char)c;
        }
    }
    o->len = (size_t)(d - o->base);
}

static h2o_iovec_t out_iovec(const struct out *o)
{
    return h2o_iovec_init(o->base, o->len);
}

/* ---- small helpers ---------------------------------------------------------------------- */

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 413:
        return "Payload Too Large";
    case 429:
        return "Too Many Requests";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Status";
    }
}

/* The error code Azure OpenAI puts in {"error":{"code":...}} for a forced status. */
static const char *azure_error_code(int status)
{
    switch (status) {
    case 400:
        return ERR_INVALID_REQUEST;
    case 401:
        return "401";
    case 403:
        return "403";
    case 404:
        return "DeploymentNotFound";
    case 408:
        return "Timeout";
    case 429:
        return "429";
    case 500:
        return "InternalServerError";
    case 502:
        return "BadGateway";
    case 503:
        return "ServiceUnavailable";
    case 504:
        return "GatewayTimeout";
    default:
        return "mock_error";
    }
}

static int has_prefix(h2o_iovec_t s, const char *prefix, size_t n)
{
    return s.len >= n && memcmp(s.base, prefix, n) == 0;
}

static int iovec_is(h2o_iovec_t s, const char *lit, size_t n)
{
    return s.len == n && memcmp(s.base, lit, n) == 0;
}

#define IS(s, lit) iovec_is((s), (lit), sizeof(lit) - 1)
#define HAS_PREFIX(s, lit) has_prefix((s), (lit), sizeof(lit) - 1)

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static void add_header(h2o_req_t *req, const char *name, size_t name_len, h2o_iovec_t value)
{
    h2o_add_header_by_str(&req->pool, &req->res.headers, name, name_len, 1, NULL, value.base, value.len);
}

#define ADD_HEADER(req, lit, value) add_header((req), lit, sizeof(lit) - 1, (value))

static h2o_iovec_t pool_fmt_u64(h2o_mem_pool_t *pool, uint64_t v)
{
    char *p = h2o_mem_alloc_pool(pool, 24);
    int n = snprintf(p, 24, "%" PRIu64, v);
    return h2o_iovec_init(p, (size_t)n);
}

/* Generator for replies sent in one h2o_send: no proceed (FINAL), nothing to stop. */
static h2o_generator_t oneshot_generator = {NULL, NULL};

/* Sends a complete reply now; headers already added to req->res.headers stay. */
static void send_oneshot(h2o_req_t *req, int status, const char *content_type, h2o_iovec_t body)
{
    req->res.status = status;
    req->res.reason = reason_phrase(status);
    req->res.content_length = body.len;
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, content_type, strlen(content_type));
    h2o_start_response(req, &oneshot_generator);
    h2o_send(req, &body, 1, H2O_SEND_STATE_FINAL);
}

static h2o_iovec_t error_body(h2o_mem_pool_t *pool, const char *code, const char *message)
{
    struct out o;
    out_init(&o, pool, 128 + strlen(message));
    out_lit(&o, "{\"error\":{\"code\":\"");
    out_json_escaped(&o, code, strlen(code));
    out_lit(&o, "\",\"message\":\"");
    out_json_escaped(&o, message, strlen(message));
    out_lit(&o, "\"}}");
    return out_iovec(&o);
}

/* ---- simulated rate-limit budget ------------------------------------------------------- */

/* Charges one request and `tokens` to the current minute; resets on a new wall-clock minute. */
static void ratelimit_charge(time_t now, int64_t tokens, int count_request)
{
    int64_t minute = (int64_t)now / 60;
    if (minute != mock.rl.minute) {
        mock.rl.minute = minute;
        mock.rl.tokens_used = 0;
        mock.rl.requests_used = 0;
    }
    mock.rl.tokens_used += tokens;
    if (count_request)
        mock.rl.requests_used += 1;
}

/* Adds the headers every data-plane reply carries. */
static void add_dataplane_headers(h2o_req_t *req)
{
    int64_t tokens = mock.opt.tpm - mock.rl.tokens_used, requests = mock.opt.rpm - mock.rl.requests_used;
    ADD_HEADER(req, "x-ratelimit-remaining-tokens", pool_fmt_u64(&req->pool, tokens > 0 ? (uint64_t)tokens : 0));
    ADD_HEADER(req, "x-ratelimit-remaining-requests", pool_fmt_u64(&req->pool, requests > 0 ? (uint64_t)requests : 0));
    ADD_HEADER(req, "x-ms-region", h2o_iovec_init(mock.opt.name, strlen(mock.opt.name)));

    uint64_t a = mix64(mock.seed ^ mock.seq), b = mix64(a);
    char *id = h2o_mem_alloc_pool(&req->pool, 40);
    int n = snprintf(id, 40, "%08" PRIx32 "-%04" PRIx32 "-4%03" PRIx32 "-%04" PRIx32 "-%012" PRIx64, (uint32_t)(a >> 32),
                     (uint32_t)(a >> 16) & 0xffff, (uint32_t)a & 0xfff, (uint32_t)(b >> 48) & 0xffff,
                     (uint64_t)(b & 0xffffffffffffull));
    ADD_HEADER(req, "apim-request-id", h2o_iovec_init(id, (size_t)n));
    /* Azure sends its request id under both names */
    ADD_HEADER(req, "x-request-id", h2o_iovec_init(id, (size_t)n));
}

/* ---- behaviour ----------------------------------------------------------------------------- */

static void behaviour_clear(struct behaviour *b)
{
    free(b->retry_after);
    free(b->retry_after_ms);
    free(b->body);
    *b = (struct behaviour){.count = -1, .chunks = -1, .reset_after_chunks = -1};
}

/*
 * Takes this request's view of the behaviour and counts it against `count`; when the count
 * runs out the switch is cleared. Strings are copied into req->pool so a later switch or
 * reset cannot pull them from under a delayed reply.
 */
static void behaviour_take(h2o_req_t *req, struct plan *p)
{
    struct behaviour *b = &mock.behaviour;
    *p = (struct plan){.chunks = -1, .reset_after_chunks = -1};
    if (!b->active)
        return;
    p->status = b->status == 200 ? 0 : b->status;
    if (b->retry_after != NULL)
        p->retry_after = h2o_strdup(&req->pool, b->retry_after, SIZE_MAX);
    if (b->retry_after_ms != NULL)
        p->retry_after_ms = h2o_strdup(&req->pool, b->retry_after_ms, SIZE_MAX);
    if (b->body != NULL)
        p->body = h2o_strdup(&req->pool, b->body, b->body_len);
    p->delay_ms = b->delay_ms;
    p->chunk_interval_ms = b->chunk_interval_ms;
    p->chunks = b->chunks;
    p->reset_after_chunks = b->reset_after_chunks;
    if (b->count > 0 && --b->count == 0)
        behaviour_clear(b);
}

/* Reads an optional integer field in [min, max]; 0 if absent or null, -1 with *err set if invalid. */
static int get_int_field(json_t *obj, const char *key, long min, long max, long *dst, const char **err)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        *err = key;
        return -1;
    }
    *dst = (long)json_integer_value(v);
    return 0;
}

/* Reads an optional header-value field given as a string (or an integer); malloc'd into *dst. */
static int get_header_field(json_t *obj, const char *key, char **dst, const char **err)
{
    json_t *v = json_object_get(obj, key);
    char buf[32];
    const char *s;
    if (v == NULL || json_is_null(v))
        return 0;
    if (json_is_string(v)) {
        s = json_string_value(v);
    } else if (json_is_integer(v)) {
        snprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        s = buf;
    } else {
        goto Invalid;
    }
    size_t n = strlen(s);
    if (n == 0 || n > MAX_HEADER_VALUE)
        goto Invalid;
    for (size_t i = 0; i != n; ++i)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] == 0x7f)
            goto Invalid;
    *dst = strdup(s);
    return 0;
Invalid:
    *err = key;
    return -1;
}

/*
 * Parses a behaviour document into *b (which the caller cleared). Returns 0, or -1 with
 * *err naming the offending field; on -1 the caller clears *b again to free partial strings.
 */
static int behaviour_parse(json_t *doc, struct behaviour *b, const char **err)
{
    static const char *const known[] = {"status", "retry_after",        "retry_after_ms",
                                        "count",  "delay_ms",           "chunk_interval_ms",
                                        "chunks", "reset_after_chunks", "body"};
    const char *key;
    json_t *v;
    long status = 0, delay = 0, interval = 0;

    if (!json_is_object(doc)) {
        *err = "document (must be an object)";
        return -1;
    }
    json_object_foreach(doc, key, v)
    {
        size_t i;
        for (i = 0; i != sizeof(known) / sizeof(known[0]); ++i)
            if (strcmp(key, known[i]) == 0)
                break;
        if (i == sizeof(known) / sizeof(known[0])) {
            *err = key;
            return -1;
        }
    }
    if (get_int_field(doc, "status", 0, 599, &status, err) != 0 || (status != 0 && status < 200))
        goto Invalid_status;
    if (get_int_field(doc, "count", -1, LONG_MAX, &b->count, err) != 0 ||
        get_int_field(doc, "delay_ms", 0, MAX_DELAY_MS, &delay, err) != 0 ||
        get_int_field(doc, "chunk_interval_ms", 0, MAX_INTERVAL_MS, &interval, err) != 0 ||
        get_int_field(doc, "chunks", 0, MAX_CHUNKS, &b->chunks, err) != 0 ||
        get_int_field(doc, "reset_after_chunks", 0, MAX_CHUNKS, &b->reset_after_chunks, err) != 0 ||
        get_header_field(doc, "retry_after", &b->retry_after, err) != 0 ||
        get_header_field(doc, "retry_after_ms", &b->retry_after_ms, err) != 0)
        return -1;
    if ((v = json_object_get(doc, "body")) != NULL && !json_is_null(v)) {
        if (!json_is_string(v)) {
            *err = "body";
            return -1;
        }
        b->body_len = json_string_length(v);
        b->body = malloc(b->body_len + 1);
        memcpy(b->body, json_string_value(v), b->body_len + 1);
    }
    b->status = (int)status;
    b->delay_ms = (uint64_t)delay;
    b->chunk_interval_ms = (uint64_t)interval;
    b->active = b->count != 0;
    return 0;

Invalid_status:
    *err = "status";
    return -1;
}

/* ---- last request ------------------------------------------------------------------------ */

static void record_last_request(h2o_req_t *req, h2o_iovec_t path)
{
    struct last_request *l = &mock.last;
    h2o_mem_clear_pool(&l->pool);
    l->present = 1;
    l->method = h2o_strdup(&l->pool, req->method.base, req->method.len);
    l->path = h2o_strdup(&l->pool, path.base, path.len);
    if (req->query_at != SIZE_MAX)
        l->query = h2o_strdup(&l->pool, req->path.base + req->query_at + 1, req->path.len - req->query_at - 1);
    else
        l->query = h2o_iovec_init(NULL, 0);
    /* h2o keeps Host (HTTP/1) and :authority (HTTP/2) out of the header list: show it as "host" */
    l->names = h2o_mem_alloc_pool(&l->pool, sizeof(h2o_iovec_t) * (req->headers.size + 1));
    l->values = h2o_mem_alloc_pool(&l->pool, sizeof(h2o_iovec_t) * (req->headers.size + 1));
    l->num_headers = 0;
    if (req->input.authority.len != 0 && h2o_find_header(&req->headers, H2O_TOKEN_HOST, -1) == -1) {
        l->names[0] = h2o_iovec_init(H2O_STRLIT("host"));
        l->values[0] = h2o_strdup(&l->pool, req->input.authority.base, req->input.authority.len);
        l->num_headers = 1;
    }
    for (size_t i = 0; i != req->headers.size; ++i) {
        const h2o_header_t *h = req->headers.entries + i;
        l->names[l->num_headers] = h2o_strdup(&l->pool, h->name->base, h->name->len);
        h2o_strtolower(l->names[l->num_headers].base, l->names[l->num_headers].len);
        l->values[l->num_headers++] = h2o_strdup(&l->pool, h->value.base, h->value.len);
    }
    if (req->entity.base != NULL)
        l->body = h2o_strdup(&l->pool, req->entity.base, req->entity.len);
    else
        l->body = h2o_iovec_init("", 0);
}

/* A JSON string of possibly non-UTF-8 bytes: invalid input is shown with '?' for bytes >= 0x80. */
static json_t *json_bytes(h2o_iovec_t s)
{
    json_t *j = json_stringn(s.base, s.len);
    if (j != NULL)
        return j;
    char *copy = malloc(s.len + 1);
    for (size_t i = 0; i != s.len; ++i)
        copy[i] = (unsigned char)s.base[i] >= 0x80 ? '?' : s.base[i];
    j = json_stringn(copy, s.len);
    free(copy);
    return j;
}

static json_t *last_request_json(void)
{
    struct last_request *l = &mock.last;
    if (!l->present)
        return json_null();
    json_t *headers = json_object();
    for (size_t i = 0; i != l->num_headers; ++i) {
        json_t *prev = json_object_getn(headers, l->names[i].base, l->names[i].len);
        if (prev != NULL && json_is_string(prev)) {
            /* a repeated header reads as the comma-joined list, as HTTP defines it */
            size_t plen = json_string_length(prev), total = plen + 2 + l->values[i].len;
            char *joined = malloc(total);
            memcpy(joined, json_string_value(prev), plen);
            memcpy(joined + plen, ", ", 2);
            memcpy(joined + plen + 2, l->values[i].base, l->values[i].len);
            json_object_setn_new(headers, l->names[i].base, l->names[i].len, json_bytes(h2o_iovec_init(joined, total)));
            free(joined);
        } else {
            json_object_setn_new(headers, l->names[i].base, l->names[i].len, json_bytes(l->values[i]));
        }
    }
    json_t *o = json_object();
    json_object_set_new(o, "method", json_bytes(l->method));
    json_object_set_new(o, "path", json_bytes(l->path));
    json_object_set_new(o, "query", l->query.base != NULL ? json_bytes(l->query) : json_null());
    json_object_set_new(o, "headers", headers);
    json_object_set_new(o, "body", json_bytes(l->body));
    return o;
}

/* ---- deferred replies: delayed and streamed ---------------------------------------------- */

/*
 * A reply that is not sent in one go from the handler: delayed (delay_ms) or an SSE stream.
 * Lifetime: malloc'd by the handler; a guard in req->pool (reply_on_req_dispose) clears
 * `req` and closes the timer when h2o disposes the request, and the timer's close callback
 * frees the struct. So the struct outlives every h2o and uv callback that can name it.
 * h2o_send may dispose the request before it returns (HTTP/1 error path), so every
 * h2o_send here is the last thing its caller does, and stats are settled before it.
 */
struct reply {
    h2o_generator_t generator;
    h2o_req_t *req; /* NULL once h2o disposed the request */
    uv_timer_t timer;
    unsigned done : 1;    /* the final (or error) send went out and stats were updated */
    unsigned started : 1; /* h2o_start_response was called */
    unsigned stream : 1;
    unsigned include_usage : 1;
    h2o_iovec_t body; /* non-stream: the whole body, in req->pool */
    /* stream */
    h2o_iovec_t head;     /* `data: {...,"choices":[` shared by all chunks, in req->pool */
    uint64_t interval_ms; /* wait between events */
    long words;           /* content events */
    long reset_after;     /* -1, or content events after which the stream is broken off */
    long next;            /* next event: 0 role, 1..words content, words+1 finish, then usage, [DONE] */
    int64_t prompt_tokens, completion_tokens;
    /* the event after `head`; h2o holds it until proceed */
    char tail[160];
};

static void reply_on_close(uv_handle_t *handle)
{
    free(handle->data);
}

static void reply_on_req_dispose(void *p)
{
    struct reply *r = *(struct reply **)p;
    if (!r->done) {
        ++mock.stats.aborted;
        --mock.stats.active;
    }
    r->req = NULL;
    uv_close((uv_handle_t *)&r->timer, reply_on_close);
}

/* Marks the reply finished before the send that may dispose the request. */
static void reply_finish(struct reply *r, int reset)
{
    r->done = 1;
    --mock.stats.active;
    if (reset)
        ++mock.stats.resets;
    else
        ++mock.stats.completed;
}

static void reply_send_event(struct reply *r)
{
    h2o_req_t *req = r->req;
    h2o_iovec_t bufs[2];
    size_t nbufs = 0;
    h2o_send_state_t state = H2O_SEND_STATE_IN_PROGRESS;
    long e = r->next++;
    int n = 0;

    if (e >= 1 && r->reset_after >= 0 && (e - 1 >= r->reset_after || e - 1 >= r->words)) {
        /* broken off: HTTP/1 closes the connection mid-chunk, HTTP/2 resets the stream */
        reply_finish(r, 1);
        h2o_send(req, NULL, 0, H2O_SEND_STATE_ERROR);
        return;
    }
    if (e == 0) {
        n = snprintf(
            r->tail, sizeof(r->tail),
            "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n");
    } else if (e <= r->words) {
        n = snprintf(r->tail, sizeof(r->tail),
                     "{\"index\":0,\"delta\":{\"content\":\"word%ld \"},\"logprobs\":null,\"finish_reason\":null}]}\n\n", e - 1);
    } else if (e == r->words + 1) {
        n = snprintf(r->tail, sizeof(r->tail), "{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}]}\n\n");
    } else if (e == r->words + 2 && r->include_usage) {
        n = snprintf(r->tail, sizeof(r->tail),
                     "],\"usage\":{\"prompt_tokens\":%" PRId64 ",\"completion_tokens\":%" PRId64 ",\"total_tokens\":%" PRId64
                     "}}\n\n",
                     r->prompt_tokens, r->completion_tokens, r->prompt_tokens + r->completion_tokens);
    } else {
        bufs[nbufs++] = h2o_iovec_init(H2O_STRLIT("data: [DONE]\n\n"));
        state = H2O_SEND_STATE_FINAL;
    }
    if (state == H2O_SEND_STATE_IN_PROGRESS) {
        assert(n > 0 && (size_t)n < sizeof(r->tail)); /* the events are bounded by their formats */
        bufs[nbufs++] = r->head;
        bufs[nbufs++] = h2o_iovec_init(r->tail, (size_t)n);
    } else {
        reply_finish(r, 0);
    }
    h2o_send(req, bufs, nbufs, state);
}

/* Sends what is due now: the whole delayed body, or the next stream event. */
static void reply_emit(struct reply *r)
{
    if (!r->started) {
        r->started = 1;
        h2o_start_response(r->req, &r->generator);
    }
    if (r->stream) {
        reply_send_event(r);
    } else {
        reply_finish(r, 0);
        h2o_send(r->req, &r->body, 1, H2O_SEND_STATE_FINAL);
    }
}

static void reply_on_timer(uv_timer_t *timer)
{
    struct reply *r = timer->data;
    if (r->req != NULL)
        reply_emit(r);
}

/* h2o wrote the previous event: pace the next one. */
static void reply_on_proceed(h2o_generator_t *generator, h2o_req_t *req)
{
    struct reply *r = (struct reply *)((char *)generator - offsetof(struct reply, generator));
    if (r->interval_ms != 0)
        uv_timer_start(&r->timer, reply_on_timer, r->interval_ms, 0);
    else
        reply_emit(r);
}

/*
 * Creates the deferred reply for req (response status and headers already set on
 * req->res). The caller fills the body or stream fields, then calls reply_start.
 * Ownership: see struct reply; the caller never frees it.
 */
static struct reply *reply_create(h2o_req_t *req)
{
    struct reply *r = calloc(1, sizeof(*r));
    if (r == NULL)
        h2o_fatal("out of memory");
    r->generator.proceed = reply_on_proceed;
    /* no stop callback: the pool guard below sees every early end, stopped generator or not */
    r->req = req;
    r->reset_after = -1;
    uv_timer_init(mock.loop, &r->timer);
    r->timer.data = r;
    struct reply **guard = h2o_mem_alloc_shared(&req->pool, sizeof(*guard), reply_on_req_dispose);
    *guard = r;
    return r;
}

static void reply_start(struct reply *r, uint64_t delay_ms)
{
    if (delay_ms != 0)
        uv_timer_start(&r->timer, reply_on_timer, delay_ms, 0);
    else
        reply_emit(r);
}

/* Sends a complete data-plane reply, after plan->delay_ms if set. */
static void send_dataplane(h2o_req_t *req, const struct plan *plan, int status, const char *content_type, h2o_iovec_t body)
{
    if (plan->delay_ms == 0) {
        --mock.stats.active;
        ++mock.stats.completed;
        send_oneshot(req, status, content_type, body);
        return;
    }
    req->res.status = status;
    req->res.reason = reason_phrase(status);
    req->res.content_length = body.len;
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, content_type, strlen(content_type));
    struct reply *r = reply_create(req);
    r->body = body;
    reply_start(r, plan->delay_ms);
}

/* An Azure-shaped error reply; the data-plane headers must already be on req->res. */
static void send_dataplane_error(h2o_req_t *req, const struct plan *plan, int status, const char *code, const char *message)
{
    send_dataplane(req, plan, status, "application/json", error_body(&req->pool, code, message));
}

/* A request refused before any tokens were charged. */
static void reject(h2o_req_t *req, const struct plan *plan, int status, const char *code, const char *message)
{
    add_dataplane_headers(req);
    send_dataplane_error(req, plan, status, code, message);
}

/* ---- data plane ---------------------------------------------------------------------------- */

enum op { OP_NONE, OP_CHAT, OP_EMBEDDINGS, OP_RESPONSES };

static enum op parse_op(h2o_iovec_t s)
{
    if (IS(s, "chat/completions"))
        return OP_CHAT;
    if (IS(s, "embeddings"))
        return OP_EMBEDDINGS;
    if (IS(s, "responses"))
        return OP_RESPONSES;
    return OP_NONE;
}

/* Deterministic prompt size: total characters / 4 + 1 per message (or input), at least 1. */
static int64_t estimate_tokens(size_t chars, size_t items)
{
    int64_t t = (int64_t)(chars / 4 + items);
    return t > 0 ? t : 1;
}

static int64_t chat_prompt_tokens(json_t *doc)
{
    json_t *messages = json_object_get(doc, "messages"), *m, *part;
    size_t chars = 0, count = 0, i, j;
    json_array_foreach(messages, i, m)
    {
        json_t *content = json_object_get(m, "content");
        ++count;
        if (json_is_string(content)) {
            chars += json_string_length(content);
        } else {
            json_array_foreach(content, j, part)
            {
                json_t *text = json_object_get(part, "text");
                if (json_is_string(text))
                    chars += json_string_length(text);
            }
        }
    }
    return estimate_tokens(chars, count);
}

/* max_completion_tokens / max_tokens / max_output_tokens when in 1..15, else DEFAULT_WORDS. */
static long completion_words(json_t *doc)
{
    static const char *const keys[] = {"max_completion_tokens", "max_tokens", "max_output_tokens"};
    for (size_t i = 0; i != 3; ++i) {
        json_t *v = json_object_get(doc, keys[i]);
        if (json_is_integer(v) && json_integer_value(v) >= 1 && json_integer_value(v) < 16)
            return (long)json_integer_value(v);
    }
    return DEFAULT_WORDS;
}

static void render_id(struct out *o, const char *prefix)
{
    out_fmt(o, "%s%016" PRIx64, prefix, mix64(mix64(mock.seq) + mock.seed));
}

static void serve_chat(h2o_req_t *req, const struct plan *plan, json_t *doc, h2o_iovec_t model, time_t now)
{
    int64_t prompt = chat_prompt_tokens(doc);
    json_t *stream = json_object_get(doc, "stream");

    if (json_is_true(stream)) {
        json_t *so = json_object_get(doc, "stream_options");
        struct reply *r;
        struct out head;
        long words = plan->chunks >= 0 ? plan->chunks : completion_words(doc);

        ratelimit_charge(now, prompt + words, 0);
        add_dataplane_headers(req);
        req->res.status = 200;
        req->res.reason = "OK";
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("text/event-stream"));
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-cache"));

        out_init(&head, &req->pool, 256 + model.len * 6);
        out_lit(&head, "data: {\"id\":\"");
        render_id(&head, "chatcmpl-");
        out_fmt(&head, "\",\"object\":\"chat.completion.chunk\",\"created\":%lld,\"model\":\"", (long long)now);
        out_json_escaped(&head, model.base, model.len);
        out_lit(&head, "\",\"system_fingerprint\":\"fp_mock\",\"choices\":[");

        r = reply_create(req);
        r->stream = 1;
        r->head = out_iovec(&head);
        r->interval_ms = plan->chunk_interval_ms;
        r->words = words;
        r->reset_after = plan->reset_after_chunks;
        r->include_usage = json_is_true(json_object_get(so, "include_usage"));
        r->prompt_tokens = prompt;
        r->completion_tokens = words;
        reply_start(r, plan->delay_ms);
        return;
    }

    long words = completion_words(doc);
    struct out o;
    ratelimit_charge(now, prompt + words, 0);
    add_dataplane_headers(req);
    out_init(&o, &req->pool, 512 + model.len * 6 + (size_t)words * 8);
    out_lit(&o, "{\"id\":\"");
    render_id(&o, "chatcmpl-");
    out_fmt(&o, "\",\"object\":\"chat.completion\",\"created\":%lld,\"model\":\"", (long long)now);
    out_json_escaped(&o, model.base, model.len);
    out_lit(&o, "\",\"system_fingerprint\":\"fp_mock\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
                "\"content\":\"");
    for (long i = 0; i != words; ++i)
        out_fmt(&o, i == 0 ? "word%ld" : " word%ld", i);
    out_fmt(&o,
            "\"},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":%" PRId64
            ",\"completion_tokens\":%ld,\"total_tokens\":%" PRId64 "}}",
            prompt, words, prompt + words);
    send_dataplane(req, plan, 200, "application/json", out_iovec(&o));
}

/* One embedding per input: a string, an array of strings, one token array, or an array of token arrays. */
/*
 * The responses API: `input` a string or a list of messages (prompt tokens as for chat),
 * `max_output_tokens` words; usage as input_tokens / output_tokens / total_tokens. With
 * "stream": true, the events response.created, one response.output_text.delta per word and
 * response.completed (carrying the usage), in one send.
 */
static void serve_responses(h2o_req_t *req, const struct plan *plan, json_t *doc, h2o_iovec_t model, time_t now)
{
    json_t *input = json_object_get(doc, "input");
    int64_t prompt, words = completion_words(doc);
    struct out o;
    long i;

    if (json_is_string(input)) {
        prompt = estimate_tokens(json_string_length(input), 1);
    } else if (json_is_array(input)) {
        json_t *wrapped = json_pack("{sO}", "messages", input);
        prompt = chat_prompt_tokens(wrapped);
        json_decref(wrapped);
    } else {
        reject(req, plan, 400, ERR_INVALID_REQUEST, "'input' must be a string or a list of messages");
        return;
    }
    ratelimit_charge(now, prompt + words, 0);
    add_dataplane_headers(req);
    out_init(&o, &req->pool, 1024 + model.len * 6 + (size_t)words * 96);
    if (json_is_true(json_object_get(doc, "stream"))) {
        out_lit(&o, "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_mock\",\"status\":"
                    "\"in_progress\",\"usage\":null}}\n\n");
        for (i = 0; i != words; ++i)
            out_fmt(&o,
                    "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"word%ld \"}\n\n",
                    i);
        out_fmt(&o,
                "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_mock\",\"status\":"
                "\"completed\",\"usage\":{\"input_tokens\":%" PRId64 ",\"output_tokens\":%" PRId64 ",\"total_tokens\":%" PRId64
                "}}}\n\n",
                prompt, words, prompt + words);
        send_dataplane(req, plan, 200, "text/event-stream", out_iovec(&o));
        return;
    }
    out_fmt(&o, "{\"id\":\"resp_mock\",\"object\":\"response\",\"created_at\":%lld,\"status\":\"completed\",\"model\":\"",
            (long long)now);
    out_json_escaped(&o, model.base, model.len);
    out_lit(&o, "\",\"output\":[{\"type\":\"message\",\"role\":\"assistant\",\"content\":[{\"type\":\"output_text\",\"text\":\"");
    for (i = 0; i != words; ++i)
        out_fmt(&o, i == 0 ? "word%ld" : " word%ld", i);
    out_fmt(&o, "\"}]}],\"usage\":{\"input_tokens\":%" PRId64 ",\"output_tokens\":%" PRId64 ",\"total_tokens\":%" PRId64 "}}",
            prompt, words, prompt + words);
    send_dataplane(req, plan, 200, "application/json", out_iovec(&o));
}

static void serve_embeddings(h2o_req_t *req, const struct plan *plan, json_t *doc, h2o_iovec_t model, time_t now)
{
    json_t *input = json_object_get(doc, "input"), *v;
    size_t n, chars = 0, i;
    int64_t tokens;
    int single;

    if (json_is_string(input)) {
        single = 1;
        n = 1;
        chars = json_string_length(input);
    } else if (json_is_array(input) && json_array_size(input) != 0) {
        single = json_is_integer(json_array_get(input, 0));
        n = single ? 1 : json_array_size(input);
        json_array_foreach(input, i, v)
        {
            if (json_is_string(v) && !single)
                chars += json_string_length(v);
            else if (json_is_integer(v) && single)
                chars += 4;
            else if (json_is_array(v) && !single)
                chars += 4 * json_array_size(v);
            else
                goto Invalid;
        }
    } else {
        goto Invalid;
    }
    tokens = estimate_tokens(chars, n);
    ratelimit_charge(now, tokens, 0);
    add_dataplane_headers(req);

    struct out o;
    out_init(&o, &req->pool, 256 + model.len * 6 + n * (EMBEDDING_DIMS * 12 + 64));
    out_lit(&o, "{\"object\":\"list\",\"data\":[");
    for (i = 0; i != n; ++i) {
        json_t *item = single ? input : json_array_get(input, i);
        uint64_t h = mix64(i * 1000003u + (json_is_string(item) ? json_string_length(item) : json_array_size(item)));
        out_fmt(&o, "%s{\"object\":\"embedding\",\"index\":%zu,\"embedding\":[", i == 0 ? "" : ",", i);
        for (int k = 0; k != EMBEDDING_DIMS; ++k)
            out_fmt(&o, "%s%.6f", k == 0 ? "" : ",", (double)((h >> (k * 8)) & 0xff) / 256.0 - 0.5);
        out_lit(&o, "]}");
    }
    out_lit(&o, "],\"model\":\"");
    out_json_escaped(&o, model.base, model.len);
    out_fmt(&o, "\",\"usage\":{\"prompt_tokens\":%" PRId64 ",\"total_tokens\":%" PRId64 "}}", tokens, tokens);
    send_dataplane(req, plan, 200, "application/json", out_iovec(&o));
    return;

Invalid:
    reject(req, plan, 400, ERR_INVALID_REQUEST, "'input' must be a string, an array of strings or token arrays");
}

/* The status forced by the behaviour switch, with its retry headers and body. */
static void serve_forced_status(h2o_req_t *req, const struct plan *plan)
{
    add_dataplane_headers(req);
    if (plan->retry_after.base != NULL)
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL, plan->retry_after.base, plan->retry_after.len);
    if (plan->retry_after_ms.base != NULL)
        ADD_HEADER(req, "retry-after-ms", plan->retry_after_ms);
    if (plan->body.base != NULL) {
        send_dataplane(req, plan, plan->status, "application/json", plan->body);
        return;
    }
    char msg[128];
    if (plan->status == 429)
        snprintf(msg, sizeof(msg), "Rate limit is exceeded. Try again in %.*s seconds.",
                 plan->retry_after.base != NULL ? (int)plan->retry_after.len : 1,
                 plan->retry_after.base != NULL ? plan->retry_after.base : "1");
    else
        snprintf(msg, sizeof(msg), "The mock backend was told to answer %d.", plan->status);
    send_dataplane_error(req, plan, plan->status, azure_error_code(plan->status), msg);
}

/*
 * Every request outside /_mock/ and /healthz. Counted, recorded, charged one request, then
 * answered by the behaviour switch or by the operation the path names.
 */
static void serve_dataplane(h2o_req_t *req, h2o_iovec_t path)
{
    struct plan plan;
    h2o_iovec_t rest, deployment = {NULL, 0}, model;
    enum op op = OP_NONE;
    time_t now = time(NULL);
    json_t *doc = NULL;

    ++mock.seq;
    ++mock.stats.requests;
    ++mock.stats.active;
    record_last_request(req, path);
    behaviour_take(req, &plan);
    ratelimit_charge(now, 0, 1);

    if (plan.status != 0) {
        serve_forced_status(req, &plan);
        return;
    }

    if (HAS_PREFIX(path, "/openai/deployments/")) {
        rest = h2o_iovec_init(path.base + sizeof("/openai/deployments/") - 1, path.len - (sizeof("/openai/deployments/") - 1));
        const char *slash = memchr(rest.base, '/', rest.len);
        if (slash != NULL && slash != rest.base) {
            deployment = h2o_iovec_init(rest.base, (size_t)(slash - rest.base));
            op = parse_op(h2o_iovec_init(slash + 1, rest.len - deployment.len - 1));
        }
    } else if (HAS_PREFIX(path, "/openai/v1/")) {
        op = parse_op(h2o_iovec_init(path.base + sizeof("/openai/v1/") - 1, path.len - (sizeof("/openai/v1/") - 1)));
    } else if (HAS_PREFIX(path, "/v1/")) {
        op = parse_op(h2o_iovec_init(path.base + sizeof("/v1/") - 1, path.len - (sizeof("/v1/") - 1)));
    }

    if (op == OP_NONE) {
        reject(req, &plan, 404, "DeploymentNotFound", "The API deployment for this resource does not exist (unknown path).");
        return;
    }
    if (!IS(req->method, "POST")) {
        reject(req, &plan, 405, "method_not_allowed", "Only POST is supported on this path.");
        return;
    }
    if (req->entity.base == NULL || (doc = json_loadb(req->entity.base, req->entity.len, 0, NULL)) == NULL ||
        !json_is_object(doc)) {
        reject(req, &plan, 400, ERR_INVALID_REQUEST, "The request body is not a valid JSON object.");
        goto Exit;
    }
    if (deployment.base != NULL) {
        model = deployment;
    } else {
        json_t *m = json_object_get(doc, "model");
        if (!json_is_string(m) || json_string_length(m) == 0) {
            reject(req, &plan, 400, ERR_INVALID_REQUEST, "'model' is required on the v1 API.");
            goto Exit;
        }
        model = h2o_iovec_init(json_string_value(m), json_string_length(m));
    }
    if (model.len > MAX_MODEL_LEN) {
        reject(req, &plan, 400, ERR_INVALID_REQUEST, "The deployment or model name is too long.");
        goto Exit;
    }
    if (op == OP_CHAT)
        serve_chat(req, &plan, doc, model, now);
    else if (op == OP_RESPONSES)
        serve_responses(req, &plan, doc, model, now);
    else
        serve_embeddings(req, &plan, doc, model, now);

Exit:
    json_decref(doc);
}

/* ---- control plane ------------------------------------------------------------------------- */

static void send_json_error(h2o_req_t *req, int status, const char *code, const char *message)
{
    send_oneshot(req, status, "application/json", error_body(&req->pool, code, message));
}

static void serve_behaviour(h2o_req_t *req)
{
    struct behaviour b;
    const char *err = NULL;
    json_t *doc;

    if (!IS(req->method, "POST")) {
        send_json_error(req, 405, "method_not_allowed", "POST a JSON behaviour document.");
        return;
    }
    if (req->entity.base == NULL || (doc = json_loadb(req->entity.base, req->entity.len, 0, NULL)) == NULL) {
        send_json_error(req, 400, ERR_INVALID_REQUEST, "The request body is not valid JSON.");
        return;
    }
    b = (struct behaviour){.count = -1, .chunks = -1, .reset_after_chunks = -1};
    if (behaviour_parse(doc, &b, &err) != 0) {
        char msg[200];
        snprintf(msg, sizeof(msg), "invalid or unknown behaviour field: %.120s", err);
        json_decref(doc);
        behaviour_clear(&b);
        send_json_error(req, 400, ERR_INVALID_REQUEST, msg);
        return;
    }
    json_decref(doc);
    behaviour_clear(&mock.behaviour);
    mock.behaviour = b;
    send_oneshot(req, 200, "application/json", h2o_iovec_init(H2O_STRLIT("{\"ok\":true}")));
}

static void serve_reset(h2o_req_t *req)
{
    if (!IS(req->method, "POST")) {
        send_json_error(req, 405, "method_not_allowed", "POST to reset.");
        return;
    }
    behaviour_clear(&mock.behaviour);
    /* `active` is a gauge of responses still in flight: it is not a counter to reset */
    mock.stats = (struct stats){.active = mock.stats.active};
    mock.rl = (struct ratelimit){0};
    mock.last.present = 0;
    h2o_mem_clear_pool(&mock.last.pool);
    send_oneshot(req, 200, "application/json", h2o_iovec_init(H2O_STRLIT("{\"ok\":true}")));
}

static void serve_stats(h2o_req_t *req)
{
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(mock.opt.name));
    json_object_set_new(o, "requests", json_integer((json_int_t)mock.stats.requests));
    json_object_set_new(o, "completed", json_integer((json_int_t)mock.stats.completed));
    json_object_set_new(o, "aborted", json_integer((json_int_t)mock.stats.aborted));
    json_object_set_new(o, "resets", json_integer((json_int_t)mock.stats.resets));
    json_object_set_new(o, "active", json_integer((json_int_t)mock.stats.active));
    json_object_set_new(o, "connections", json_integer((json_int_t)mock.stats.connections));
    json_object_set_new(o, "last_request", last_request_json());
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (s == NULL) {
        send_json_error(req, 500, "internal_error", "could not render stats");
        return;
    }
    h2o_iovec_t body = h2o_strdup(&req->pool, s, SIZE_MAX);
    free(s);
    send_oneshot(req, 200, "application/json", body);
}

/* ---- server --------------------------------------------------------------------------------- */

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    h2o_iovec_t path = h2o_iovec_init(req->path.base, req->query_at != SIZE_MAX ? req->query_at : req->path.len);

    if (HAS_PREFIX(path, "/_mock/")) {
        if (IS(path, "/_mock/behaviour"))
            serve_behaviour(req);
        else if (IS(path, "/_mock/reset"))
            serve_reset(req);
        else if (IS(path, "/_mock/stats"))
            serve_stats(req);
        else
            send_json_error(req, 404, "not_found", "unknown control endpoint");
    } else if (IS(path, "/healthz")) {
        send_oneshot(req, 200, "text/plain", h2o_iovec_init(H2O_STRLIT("ok")));
    } else {
        serve_dataplane(req, path);
    }
    return 0;
}

static void on_conn_close(uv_handle_t *handle)
{
    free(handle);
}

static void on_accept(uv_stream_t *listener, int status)
{
    uv_tcp_t *conn;

    if (status != 0)
        return;
    if ((conn = malloc(sizeof(*conn))) == NULL)
        return;
    uv_tcp_init(listener->loop, conn);
    if (uv_accept(listener, (uv_stream_t *)conn) != 0) {
        uv_close((uv_handle_t *)conn, on_conn_close);
        return;
    }
    /* SSE events are small writes: do not let Nagle hold them back */
    uv_tcp_nodelay(conn, 1);
    ++mock.stats.connections;
    h2o_accept(&mock.accept_ctx, h2o_uv_socket_create((uv_stream_t *)conn, on_conn_close));
}

static void on_signal(uv_signal_t *handle, int signum)
{
    if (uv_is_closing((uv_handle_t *)&mock.listener))
        return;
    uv_close((uv_handle_t *)&mock.listener, NULL);
    uv_close((uv_handle_t *)&mock.sigint, NULL);
    uv_close((uv_handle_t *)&mock.sigterm, NULL);
    uv_stop(mock.loop);
}

/* Binds and listens on host:port; returns 0 or a negative uv error, with *bound the port in use. */
static int listen_on(const char *host, int port, int *bound)
{
    struct sockaddr_storage ss;
    int namelen = sizeof(ss), r;

    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) != 0 && uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) != 0)
        return UV_EINVAL;
    uv_tcp_init(mock.loop, &mock.listener);
    if ((r = uv_tcp_bind(&mock.listener, (struct sockaddr *)&ss, 0)) != 0 ||
        (r = uv_listen((uv_stream_t *)&mock.listener, 1024, on_accept)) != 0)
        return r;
    if ((r = uv_tcp_getsockname(&mock.listener, (struct sockaddr *)&ss, &namelen)) != 0)
        return r;
    *bound = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port : ((struct sockaddr_in *)&ss)->sin_port);
    return 0;
}

static void usage(FILE *fp)
{
    fprintf(fp, "usage: aoai-mock --port N [--host 127.0.0.1] [--name NAME] [--tpm N] [--rpm N]\n"
                "  --port N   listen port (0 = any free port; the line printed when ready names it)\n"
                "  --host H   listen address, IPv4 or IPv6 literal (default 127.0.0.1)\n"
                "  --name S   name in x-ms-region and /_mock/stats (default mock)\n"
                "  --tpm N    simulated tokens per minute behind x-ratelimit-remaining-tokens (default 1000000)\n"
                "  --rpm N    simulated requests per minute behind x-ratelimit-remaining-requests (default 10000)\n");
}

static int parse_i64(const char *s, int64_t min, int64_t max, int64_t *dst)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
        return -1;
    *dst = v;
    return 0;
}

static int parse_args(int argc, char **argv, struct options *opt)
{
    int64_t port = -1;
    *opt = (struct options){.host = "127.0.0.1", .name = "mock", .tpm = 1000000, .rpm = 10000};
    for (int i = 1; i < argc; ++i) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            exit(0);
        }
        if (v == NULL)
            goto Bad;
        ++i;
        if (strcmp(a, "--port") == 0) {
            if (parse_i64(v, 0, 65535, &port) != 0)
                goto Bad;
        } else if (strcmp(a, "--host") == 0) {
            opt->host = v;
        } else if (strcmp(a, "--name") == 0) {
            opt->name = v;
        } else if (strcmp(a, "--tpm") == 0) {
            if (parse_i64(v, 0, INT64_MAX / 2, &opt->tpm) != 0)
                goto Bad;
        } else if (strcmp(a, "--rpm") == 0) {
            if (parse_i64(v, 0, INT64_MAX / 2, &opt->rpm) != 0)
                goto Bad;
        } else {
            goto Bad;
        }
    }
    if (port < 0)
        goto Bad;
    opt->port = (int)port;
    return 0;
Bad:
    usage(stderr);
    return -1;
}

int main(int argc, char **argv)
{
    h2o_hostconf_t *hostconf;
    h2o_handler_t *handler;
    int port, r;

    if (parse_args(argc, argv, &mock.opt) != 0)
        return 2;
    signal(SIGPIPE, SIG_IGN);
    mock.seed = mix64((uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32));
    behaviour_clear(&mock.behaviour);
    h2o_mem_init_pool(&mock.last.pool);

    h2o_config_init(&mock.config);
    mock.config.server_name = h2o_iovec_init(H2O_STRLIT("aoai-mock"));
    mock.config.max_request_entity_size = MAX_BODY_BYTES;
    mock.config.http1.req_timeout = IDLE_TIMEOUT_MS;
    mock.config.http2.idle_timeout = IDLE_TIMEOUT_MS;
    hostconf = h2o_config_register_host(&mock.config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    handler = h2o_create_handler(h2o_config_register_path(hostconf, "/", 0), sizeof(*handler));
    handler->on_req = on_req;

    mock.loop = uv_default_loop();
    h2o_context_init(&mock.ctx, mock.loop, &mock.config);
    mock.accept_ctx.ctx = &mock.ctx;
    mock.accept_ctx.hosts = mock.config.hosts;

    if ((r = listen_on(mock.opt.host, mock.opt.port, &port)) != 0) {
        fprintf(stderr, "aoai-mock: cannot listen on %s:%d: %s\n", mock.opt.host, mock.opt.port, uv_strerror(r));
        return 1;
    }
    uv_signal_init(mock.loop, &mock.sigint);
    uv_signal_init(mock.loop, &mock.sigterm);
    uv_signal_start(&mock.sigint, on_signal, SIGINT);
    uv_signal_start(&mock.sigterm, on_signal, SIGTERM);

    fprintf(stderr, "aoai-mock %s listening on %s:%d\n", mock.opt.name, mock.opt.host, port);
    uv_run(mock.loop, UV_RUN_DEFAULT);

    /* connections still open are dropped with the process; what we own is released */
    behaviour_clear(&mock.behaviour);
    h2o_mem_clear_pool(&mock.last.pool);
    return 0;
}
