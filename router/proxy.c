/*
 * proxy.c — see proxy.h.
 *
 * An attempt runs as one libcurl transfer. Its header callback learns the status:
 * 429 and 5xx switch the attempt to DISCARD (fail over when it ends); anything else
 * commits. A committed JSON reply is collected (BUFFER) and sent whole with its
 * length when the transfer ends, so an error mid-body can still fail over; an SSE
 * reply (STREAM) goes to the client event by event. h2o allows one h2o_send in
 * flight until the generator's proceed callback: data arriving meanwhile queues in
 * `pending`, and past AOR_STREAM_HIGH_WATER the transfer is paused until the client
 * catches up.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include "backend.h"
#include "cred.h"
#include "config.h"
#include "errors.h"
#include "log.h"
#include "metrics.h"
#include "pipeline_internal.h"
#include "proxy.h"
#include "request.h"
#include "server.h"

static void start_attempt(struct aor_request *ar);

static int buf_append(struct aor_buf *b, const char *p, size_t len)
{
    if (b->len + len > b->cap) {
        size_t cap = b->cap == 0 ? 4096 : b->cap;
        char *n;
        while (cap < b->len + len)
            cap *= 2;
        if ((n = realloc(b->base, cap)) == NULL)
            return -1;
        b->base = n;
        b->cap = cap;
    }
    memcpy(b->base + b->len, p, len);
    b->len += len;
    return 0;
}

static void buf_free(struct aor_buf *b)
{
    free(b->base);
    b->base = NULL;
    b->len = b->cap = 0;
}

static struct aor_balancer_policy policy_of(const struct aor_config *conf)
{
    struct aor_balancer_policy p = {conf->circuit.failures, conf->circuit.open_ms};
    return p;
}

/* the value of header `name` among the raw lines of the current attempt */
static int find_resp_header(struct aor_request *ar, const char *name, const char **value, size_t *len)
{
    size_t nlen = strlen(name), off = 0;

    while (off < ar->resp_headers.len) {
        char *line = ar->resp_headers.base + off, *nl = memchr(line, '\n', ar->resp_headers.len - off);
        size_t llen = nl != NULL ? (size_t)(nl - line) : ar->resp_headers.len - off;
        off += llen + 1;
        if (llen > nlen && line[nlen] == ':' && strncasecmp(line, name, nlen) == 0) {
            const char *v = line + nlen + 1, *end = line + llen;
            while (v < end && (*v == ' ' || *v == '\t'))
                ++v;
            while (end > v && (end[-1] == '\r' || end[-1] == ' ' || end[-1] == '\t'))
                --end;
            *value = v;
            *len = end - v;
            return 1;
        }
    }
    return 0;
}

static int hop_by_hop_or_private(const char *name, size_t len)
{
    static const char *const drop[] = {"connection",
                                       "keep-alive",
                                       "transfer-encoding",
                                       "content-length",
                                       "upgrade",
                                       "proxy-connection",
                                       "te",
                                       "trailer",
                                       "date",
                                       "server",
                                       "x-ratelimit-remaining-tokens",
                                       "x-ratelimit-remaining-requests",
                                       NULL};
    size_t i;

    for (i = 0; drop[i] != NULL; ++i)
        if (strlen(drop[i]) == len && strncasecmp(drop[i], name, len) == 0)
            return 1;
    return 0;
}

/* copies the attempt's response headers (filtered, lower-cased) to the client response */
static void copy_response_headers(struct aor_request *ar)
{
    h2o_req_t *req = ar->req;
    size_t off = 0;

    while (off < ar->resp_headers.len) {
        char *line = ar->resp_headers.base + off, *nl = memchr(line, '\n', ar->resp_headers.len - off), *colon;
        size_t llen = nl != NULL ? (size_t)(nl - line) : ar->resp_headers.len - off, nlen, i;
        const char *v, *end;
        char *name;
        off += llen + 1;
        if ((colon = memchr(line, ':', llen)) == NULL || colon == line)
            continue;
        nlen = colon - line;
        if (hop_by_hop_or_private(line, nlen))
            continue;
        v = colon + 1;
        end = line + llen;
        while (v < end && (*v == ' ' || *v == '\t'))
            ++v;
        while (end > v && (end[-1] == '\r' || end[-1] == ' ' || end[-1] == '\t'))
            --end;
        name = h2o_mem_alloc_pool(&req->pool, nlen);
        for (i = 0; i != nlen; ++i)
            name[i] = (char)tolower((unsigned char)line[i]);
        h2o_add_header_by_str(&req->pool, &req->res.headers, name, nlen, 1, NULL, h2o_strdup(&req->pool, v, end - v).base, end - v);
    }
}

static void start_client_response(struct aor_request *ar)
{
    h2o_req_t *req = ar->req;
    const struct aor_backend_conf *b = ar->cand_backend[ar->current];

    ar->started = 1;
    req->res.status = ar->status;
    req->res.reason = ar->status < 300 ? "OK" : ar->status < 500 ? "Client Error" : "Server Error";
    copy_response_headers(ar);
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-aoai-router-backend"), 0, NULL, b->name, strlen(b->name));
    aor_pipeline_add_client_headers(ar);
    ar->final_status = ar->status;
    h2o_start_response(req, &ar->generator);
}

/* hands `pending` to h2o if nothing is in flight; sends the final frame when the upstream is done */
static void flush(struct aor_request *ar)
{
    h2o_iovec_t vec;
    struct aor_buf t;
    h2o_send_state_t state;

    if (ar->req == NULL || ar->sending || ar->final_sent)
        return;
    if (ar->pending.len == 0 && !ar->upstream_done)
        return;
    /* what was in flight has been written: recycle its buffer for the next batch */
    t = ar->inflight;
    ar->inflight = ar->pending;
    ar->pending = t;
    ar->pending.len = 0;
    vec = h2o_iovec_init(ar->inflight.base, ar->inflight.len);
    state = ar->upstream_done ? H2O_SEND_STATE_FINAL : H2O_SEND_STATE_IN_PROGRESS;
    ar->sending = !ar->upstream_done;
    ar->bytes_to_client += vec.len;
    if (state == H2O_SEND_STATE_FINAL) {
        ar->final_sent = 1;
        aor_pipeline_finish(ar);
    }
    h2o_send(ar->req, &vec, vec.len != 0 ? 1 : 0, state);
}

static void on_proceed(h2o_generator_t *gen, h2o_req_t *req)
{
    struct aor_request *ar = H2O_STRUCT_FROM_MEMBER(struct aor_request, generator, gen);

    ar->sending = 0;
    if (ar->abort_after_send) {
        ar->abort_after_send = 0;
        h2o_send(req, NULL, 0, H2O_SEND_STATE_ERROR);
        return;
    }
    flush(ar);
    if (ar->paused && ar->pending.len < AOR_STREAM_HIGH_WATER && ar->xfer.active) {
        /* may deliver the held-back data through on_body before it returns */
        ar->paused = 0;
        curl_easy_pause(ar->xfer.easy, CURLPAUSE_CONT);
    }
}

static void end_attempt(struct aor_request *ar);

/* stops the running transfer, unless we are inside one of its callbacks: then the
 * write callback sees req == NULL, aborts, and the done callback cleans up */
static void cancel_upstream(struct aor_request *ar)
{
    if (!ar->xfer.active || ar->in_curl_cb)
        return;
    aor_upstream_cancel(ar->worker->upstream, &ar->xfer);
    end_attempt(ar);
}

static void on_stop(h2o_generator_t *gen, h2o_req_t *req)
{
    struct aor_request *ar = H2O_STRUCT_FROM_MEMBER(struct aor_request, generator, gen);

    /* the client went away mid-response; the dispose callback that follows frees */
    cancel_upstream(ar);
}

static int is_failover_status(int status)
{
    return status == 429 || status >= 500;
}

static void on_headers_complete(struct aor_request *ar)
{
    const char *ct, *v;
    size_t ct_len, vlen;

    if (find_resp_header(ar, "x-ratelimit-remaining-tokens", &v, &vlen) && vlen != 0 && vlen < 20) {
        char tmp[21];
        memcpy(tmp, v, vlen);
        tmp[vlen] = '\0';
        ar->backend_remaining_tokens = strtoll(tmp, NULL, 10);
    }
    if (is_failover_status(ar->status)) {
        ar->mode = AOR_MODE_DISCARD;
        return;
    }
    if (find_resp_header(ar, "content-type", &ct, &ct_len) && ct_len >= 17 && strncasecmp(ct, "text/event-stream", 17) == 0) {
        ar->mode = AOR_MODE_STREAM;
    } else {
        ar->mode = AOR_MODE_BUFFER;
    }
}

static size_t on_header(char *data, size_t size, size_t nitems, void *userp)
{
    struct aor_request *ar = userp;
    size_t len = size * nitems;

    if (len >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        /* a status line: (re)starts the header block (1xx blocks come before the real one) */
        const char *sp = memchr(data, ' ', len);
        ar->status = sp != NULL && sp + 4 <= data + len ? atoi(sp + 1) : 0;
        ar->resp_headers.len = 0;
        return len;
    }
    if (len <= 2 && (len == 0 || data[0] == '\r' || data[0] == '\n')) {
        if (ar->status >= 200)
            on_headers_complete(ar);
        return len;
    }
    if (ar->resp_headers.len + len > AOR_MAX_RESPONSE_HEADER_BYTES)
        return 0; /* aborts the transfer: a backend is not allowed unbounded headers */
    if (buf_append(&ar->resp_headers, data, len) != 0)
        return 0;
    return len;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *userp)
{
    struct aor_request *ar = userp;
    size_t len = size * nmemb;

    if (ar->req == NULL)
        return 0; /* the client is gone: abort the transfer */
    switch (ar->mode) {
    case AOR_MODE_HEADERS:
        return 0;
    case AOR_MODE_DISCARD:
        /* an error body: read (to keep the connection reusable) but bounded */
        return ar->resp_headers.len + len > AOR_MAX_RESPONSE_HEADER_BYTES * 4 ? 0 : len;
    case AOR_MODE_BUFFER:
        if (ar->pending.len + len <= AOR_BUFFER_MAX)
            return buf_append(&ar->pending, data, len) == 0 ? len : 0;
        /* too large to hold: stream what we have and the rest */
        ar->mode = AOR_MODE_STREAM;
        break;
    case AOR_MODE_STREAM:
        break;
    }
    /* STREAM */
    if (ar->first_byte_ns == 0)
        ar->first_byte_ns = aor_mono_ns();
    if (ar->pending.len != 0 && ar->pending.len + len > AOR_STREAM_HIGH_WATER) {
        ar->paused = 1;
        return CURL_WRITEFUNC_PAUSE; /* curl keeps this chunk and delivers it again on resume */
    }
    aor_sse_feed(&ar->sse, data, len);
    if (buf_append(&ar->pending, data, len) != 0)
        return 0;
    if (!ar->started)
        start_client_response(ar);
    ar->in_curl_cb = 1;
    flush(ar);
    ar->in_curl_cb = 0;
    return len;
}

static const char *failover_reason(CURLcode result)
{
    switch (result) {
    case CURLE_OPERATION_TIMEDOUT:
        return "timeout";
    default:
        return "connect";
    }
}

static void finish_error(struct aor_request *ar, enum aor_error err, const char *message, int64_t retry_after_s)
{
    h2o_req_t *req = ar->req;

    if (retry_after_s > 0) {
        char *v = h2o_mem_alloc_pool(&req->pool, 24);
        int n = snprintf(v, 24, "%lld", (long long)retry_after_s);
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL, v, n);
    }
    ar->final_status = aor_error_status(err);
    ar->final_sent = 1;
    aor_pipeline_finish(ar);
    aor_error_send(req, err, message);
}

/* every attempt is spent or no candidate is left: answer with the SPEC §4 error */
static void give_up(struct aor_request *ar, int64_t earliest_cooldown_end)
{
    int64_t now = aor_now_ms();
    size_t i;

    for (i = 0; i != ar->num_cand; ++i) {
        int64_t until = __atomic_load_n(&ar->cand[i].state->cooldown_until_ms, __ATOMIC_RELAXED);
        if (until > now && (earliest_cooldown_end == 0 || until < earliest_cooldown_end))
            earliest_cooldown_end = until;
    }
    if (ar->failed == 0 && (ar->throttled != 0 || earliest_cooldown_end != 0)) {
        /* only throttling stood in the way: tell the client when capacity returns */
        int64_t wait_ms = earliest_cooldown_end > now ? earliest_cooldown_end - now : 1000;
        finish_error(ar, AOR_ERR_BACKENDS_THROTTLED, "every backend serving this deployment is throttled; retry later",
                     (wait_ms + 999) / 1000);
        return;
    }
    finish_error(ar, AOR_ERR_BACKEND_ERROR,
                 ar->attempts == 0 ? "no backend is available (circuits open)" : "every attempt to reach a backend failed", 0);
}

static void end_attempt(struct aor_request *ar)
{
    curl_slist_free_all(ar->upstream_headers);
    ar->upstream_headers = NULL;
    aor_upstream_release(ar->worker->upstream, ar->xfer.easy);
    ar->xfer.easy = NULL;
}

static void next_attempt(struct aor_request *ar)
{
    if (ar->attempts >= ar->conf->limits.max_attempts) {
        give_up(ar, 0);
        return;
    }
    start_attempt(ar);
}

static void on_transfer_done(struct aor_upstream_xfer *xfer, CURLcode result)
{
    struct aor_request *ar = H2O_STRUCT_FROM_MEMBER(struct aor_request, xfer, xfer);
    const struct aor_backend_conf *b = ar->cand_backend[ar->current];
    struct aor_balancer_policy pol = policy_of(ar->conf);
    int64_t now = aor_now_ms();

    end_attempt(ar);
    if (ar->req == NULL) {
        aor_pipeline_maybe_free(ar);
        return;
    }
    if (ar->backend_remaining_tokens >= 0)
        aor_balancer_report_remaining(b->state, ar->backend_remaining_tokens, now);

    if (result != CURLE_OK && !ar->started) {
        /* nothing reached the client: this attempt failed, the request may go elsewhere */
        const char *reason = failover_reason(result);
        AOR_LOG(AOR_LOG_WARN, "proxy", "%s: backend %s attempt %u failed: %s (%s)", ar->id, b->name, ar->attempts, reason,
                curl_easy_strerror(result));
        aor_balancer_record(b->state, &pol, AOR_OUTCOME_FAILURE, 0, now);
        aor_metrics_failover(b->name, reason);
        ++ar->failed;
        ar->last_error = reason;
        ar->pending.len = 0;
        next_attempt(ar);
        return;
    }
    if (result != CURLE_OK) {
        /* mid-stream: the client already has part of the answer, so it gets an incomplete one */
        AOR_LOG(AOR_LOG_WARN, "proxy", "%s: backend %s failed mid-response: %s", ar->id, b->name, curl_easy_strerror(result));
        aor_balancer_record(b->state, &pol, AOR_OUTCOME_FAILURE, 0, now);
        ar->final_status = 502;
        ar->final_sent = 1;
        aor_pipeline_finish(ar);
        if (ar->sending)
            ar->abort_after_send = 1; /* h2o allows no send before proceed */
        else
            h2o_send(ar->req, NULL, 0, H2O_SEND_STATE_ERROR);
        return;
    }
    if (ar->mode == AOR_MODE_DISCARD) {
        if (ar->status == 429) {
            const char *ms = NULL, *s = NULL;
            size_t ms_len = 0, s_len = 0;
            int capped;
            int64_t cooldown;
            find_resp_header(ar, "retry-after-ms", &ms, &ms_len);
            find_resp_header(ar, "retry-after", &s, &s_len);
            cooldown = aor_retry_after_ms(ms, ms_len, s, s_len, now, (int64_t)ar->conf->limits.default_cooldown_ms,
                                          (int64_t)ar->conf->limits.max_cooldown_ms, &capped);
            if (capped)
                AOR_LOG(AOR_LOG_WARN, "proxy", "%s: backend %s asked for an absurd retry-after; cooldown capped at %lld ms", ar->id,
                        b->name, (long long)cooldown);
            aor_balancer_record(b->state, &pol, AOR_OUTCOME_THROTTLED, cooldown, now);
            aor_balancer_add_sent(b->state, -ar->estimate, now);
            ++ar->throttled;
            ar->last_error = "429";
        } else {
            aor_balancer_record(b->state, &pol, AOR_OUTCOME_FAILURE, 0, now);
            ++ar->failed;
            ar->last_error = "5xx";
        }
        aor_metrics_failover(b->name, ar->last_error);
        AOR_LOG(AOR_LOG_INFO, "proxy", "%s: backend %s answered %d, failing over", ar->id, b->name, ar->status);
        ar->pending.len = 0;
        next_attempt(ar);
        return;
    }

    aor_balancer_record(b->state, &pol, AOR_OUTCOME_SUCCESS, 0, now);
    aor_metrics_upstream_duration(b->name, (double)(aor_mono_ns() - ar->upstream_started_ns) / 1e9);
    if (ar->mode == AOR_MODE_STREAM && ar->first_byte_ns != 0)
        aor_metrics_ttfb(b->name, (double)(ar->first_byte_ns - ar->started_ns) / 1e9);
    if (ar->mode == AOR_MODE_BUFFER) {
        aor_usage_from_json(ar->pending.base, ar->pending.len, &ar->usage);
        ar->req->res.content_length = ar->pending.len;
        if (ar->first_byte_ns == 0)
            ar->first_byte_ns = aor_mono_ns();
        start_client_response(ar);
    } else if (ar->sse.usage.found) {
        ar->usage = ar->sse.usage;
    }
    if (!ar->started)
        start_client_response(ar);
    if (ar->usage.found) /* replace the estimate counted at the start of the attempt by what was spent */
        aor_balancer_add_sent(b->state, ar->usage.total - ar->estimate, now);
    ar->upstream_done = 1;
    flush(ar);
}

static int skip_request_header(struct aor_request *ar, const h2o_iovec_t *name)
{
    static const char *const drop[] = {"host",
                                       "content-length",
                                       "transfer-encoding",
                                       "connection",
                                       "keep-alive",
                                       "te",
                                       "upgrade",
                                       "proxy-connection",
                                       "proxy-authorization",
                                       "expect",
                                       "accept-encoding",
                                       "authorization",
                                       "api-key",
                                       "ocp-apim-subscription-key",
                                       "http2-settings",
                                       "x-request-id",
                                       "cookie",
                                       NULL};
    size_t i;

    if (name->len == 0 || name->base[0] == ':')
        return 1;
    for (i = 0; drop[i] != NULL; ++i)
        if (strlen(drop[i]) == name->len && memcmp(drop[i], name->base, name->len) == 0)
            return 1;
    for (i = 0; i != ar->conf->auth.num_key_headers; ++i)
        if (strlen(ar->conf->auth.key_headers[i]) == name->len &&
            strncasecmp(ar->conf->auth.key_headers[i], name->base, name->len) == 0)
            return 1;
    return 0;
}

static int build_headers(struct aor_request *ar, const struct aor_backend_conf *b, struct curl_slist **out)
{
    struct curl_slist *l = NULL, *n;
    char line[8192];
    size_t i;

    for (i = 0; i != ar->req->headers.size; ++i) {
        const h2o_header_t *h = ar->req->headers.entries + i;
        if (skip_request_header(ar, h->name) || h->name->len + h->value.len + 3 > sizeof(line))
            continue;
        snprintf(line, sizeof(line), "%.*s: %.*s", (int)h->name->len, h->name->base, (int)h->value.len, h->value.base);
        if ((n = curl_slist_append(l, line)) == NULL)
            goto fail;
        l = n;
    }
    snprintf(line, sizeof(line), "x-request-id: %s", ar->id);
    if ((n = curl_slist_append(l, line)) == NULL)
        goto fail;
    l = n;
    /* no "Expect: 100-continue" round trip; curl's default Accept is not ours to add */
    if ((n = curl_slist_append(l, "Expect:")) == NULL || (l = n, (n = curl_slist_append(l, "Accept:")) == NULL))
        goto fail;
    l = n;
    if (aor_cred_apply(b, &l) != NULL)
        goto fail;
    *out = l;
    return 0;
fail:
    curl_slist_free_all(l);
    return -1;
}

/* the body for this backend: the client's, or with `model` set to the backend's name for the deployment */
static int attempt_body(struct aor_request *ar, const struct aor_backend_conf *b, const char *name, const char **body, size_t *len)
{
    size_t name_len = strlen(name), cap = ar->body_len + name_len + 16;
    int n;

    free(ar->attempt_body);
    ar->attempt_body = NULL;
    if (!ar->body_is_json || (ar->route.kind != AOR_ROUTE_V1 && b->provider != AOR_PROVIDER_OPENAI)) {
        *body = ar->body;
        *len = ar->body_len;
        return 0;
    }
    if ((ar->attempt_body = malloc(cap)) == NULL ||
        (n = aor_reqbody_with_model(ar->body, ar->body_len, &ar->rb, name, name_len, ar->attempt_body, cap)) < 0)
        return -1;
    *body = ar->attempt_body;
    *len = (size_t)n;
    return 0;
}

static void start_attempt(struct aor_request *ar)
{
    struct aor_worker *w = ar->worker;
    int64_t earliest = 0, now = aor_now_ms();
    const struct aor_backend_conf *b;
    const char *body, *name;
    size_t body_len, url_len;
    char url[4096];
    CURL *easy;
    int pick, n;

    pick = aor_balancer_pick(ar->cand, ar->num_cand, now, aor_worker_random(w), &earliest);
    if (pick < 0) {
        give_up(ar, earliest);
        return;
    }
    ar->current = pick;
    ar->cand[pick].tried = 1;
    ++ar->attempts;
    b = ar->cand_backend[pick];
    name = ar->cand_name[pick];
    aor_balancer_add_sent(b->state, ar->estimate, now);

    url_len = strlen(b->url);
    if (url_len >= sizeof(url) ||
        (n = aor_route_upstream_path(&ar->route, b->provider, name, strlen(name), url + url_len, sizeof(url) - url_len)) < 0) {
        ++ar->failed;
        next_attempt(ar);
        return;
    }
    memcpy(url, b->url, url_len);
    if (attempt_body(ar, b, name, &body, &body_len) != 0 || build_headers(ar, b, &ar->upstream_headers) != 0 ||
        (easy = aor_upstream_acquire(w->upstream)) == NULL) {
        /* out of memory or no credential: counts as a failed attempt on this backend */
        struct aor_balancer_policy pol = policy_of(ar->conf);
        AOR_LOG(AOR_LOG_WARN, "proxy", "%s: backend %s: could not prepare the attempt (credential unavailable?)", ar->id, b->name);
        aor_balancer_record(b->state, &pol, AOR_OUTCOME_FAILURE, 0, now);
        ++ar->failed;
        curl_slist_free_all(ar->upstream_headers);
        ar->upstream_headers = NULL;
        next_attempt(ar);
        return;
    }
    ar->xfer.easy = easy;
    ar->xfer.on_done = on_transfer_done;
    ar->status = 0;
    ar->mode = AOR_MODE_HEADERS;
    ar->resp_headers.len = 0;
    ar->backend_remaining_tokens = -1;
    ar->upstream_started_ns = aor_mono_ns();

    curl_easy_setopt(easy, CURLOPT_URL, url);
    if (ar->req->method.len == 3 && memcmp(ar->req->method.base, "GET", 3) == 0) {
        curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
    } else {
        curl_easy_setopt(easy, CURLOPT_POST, 1L);
        curl_easy_setopt(easy, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
        if (!(ar->req->method.len == 4 && memcmp(ar->req->method.base, "POST", 4) == 0)) {
            char method[16];
            snprintf(method, sizeof(method), "%.*s", (int)ar->req->method.len, ar->req->method.base);
            curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, method);
        }
    }
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, ar->upstream_headers);
    curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(easy, CURLOPT_HEADERDATA, ar);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, ar);
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long)ar->conf->limits.upstream_timeout_ms);
    curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, (long)ar->conf->limits.connect_timeout_ms);
    curl_easy_setopt(easy, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(easy, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 2L);

    if (aor_upstream_start(w->upstream, &ar->xfer) != 0) {
        end_attempt(ar);
        ++ar->failed;
        next_attempt(ar);
    }
}

void aor_proxy_start(struct aor_request *ar)
{
    ar->generator.proceed = on_proceed;
    ar->generator.stop = on_stop;
    ar->current = -1;
    start_attempt(ar);
}

void aor_proxy_on_dispose(struct aor_request *ar)
{
    cancel_upstream(ar);
}

void aor_proxy_free(struct aor_request *ar)
{
    buf_free(&ar->inflight);
    buf_free(&ar->pending);
    buf_free(&ar->resp_headers);
    aor_sse_dispose(&ar->sse);
    free(ar->attempt_body);
    end_attempt(ar);
}
