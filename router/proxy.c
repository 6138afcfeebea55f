/*
 * proxy.c — see proxy.h.
 *
 * An attempt is one upstream_h1 transfer (our HTTP/1.1 client on the worker's pool for
 * the backend). Its head callback learns the status: 429 and 5xx switch the attempt to
 * DISCARD (fail over when it ends); anything else commits, and the backend's headers
 * (filtered) go into the client's response, to be taken out again if the attempt still
 * fails. A committed JSON reply is collected (BUFFER) and sent whole with its length
 * when the transfer ends, so an error mid-body (upstream_h1 reports a cut body as an
 * error, never as the end) can still fail over; an SSE reply (STREAM) goes to the client
 * event by event, and a break after its first byte aborts the client's stream.
 * How an attempt ends decides what it costs the backend: an error of the backend's
 * (connect, timeout, broken or truncated answer, 5xx) counts towards its circuit; the
 * router's own shortage (aor_upstream_h1_err_local: descriptors, memory, the per-origin
 * connection cap) ends the attempt without counting. h2o allows one h2o_send in flight until
 * the generator's proceed callback: data arriving meanwhile queues in `pending`, and
 * past AOR_STREAM_HIGH_WATER the upstream socket stops being read until the client
 * catches up.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "backend.h"
#include "coolshare.h"
#include "cred.h"
#include "config.h"
#include "errors.h"
#include "jsonscan.h"
#include "log.h"
#include "metrics.h"
#include "pipeline_internal.h"
#include "proxy.h"
#include "request.h"
#include "server.h"

#define MAX_REQUEST_HEADER_LINE 8192                           /* a longer client header is not forwarded */
#define MAX_DISCARDED_BODY (4 * AOR_MAX_RESPONSE_HEADER_BYTES) /* of a 429/5xx reply, read to keep the connection */

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

/* an answer collected whole takes its bytes from the process-wide budget of bodies in flight
 * (limits.max_inflight_body_bytes); 0 when it is spent: the answer is streamed instead */
static int take_resp_budget(struct aor_request *ar, size_t len)
{
    uint64_t held = __atomic_add_fetch(&aor_inflight_body_bytes, len, __ATOMIC_RELAXED);

    if (held > ar->conf->limits.max_inflight_body_bytes) {
        __atomic_fetch_sub(&aor_inflight_body_bytes, len, __ATOMIC_RELAXED);
        return 0;
    }
    ar->resp_budget += len;
    return 1;
}

static void release_resp_budget(struct aor_request *ar)
{
    if (ar->resp_budget != 0)
        __atomic_fetch_sub(&aor_inflight_body_bytes, ar->resp_budget, __ATOMIC_RELAXED);
    ar->resp_budget = 0;
}

static void buf_free(struct aor_buf *b)
{
    free(b->base);
    b->base = NULL;
    b->len = b->cap = 0;
}

static struct aor_balancer_policy policy_of(const struct aor_config *conf)
{
    /* a probe's claim outlives the longest attempt (connect + whole transfer) by a second */
    struct aor_balancer_policy p = {conf->circuit.failures, conf->circuit.open_ms,
                                    conf->limits.connect_timeout_ms + conf->limits.upstream_timeout_ms + 1000,
                                    conf->limits.max_cooldown_ms};
    return p;
}

static struct aor_balancer_candidate *current_cand(struct aor_request *ar)
{
    return &ar->cand[ar->current];
}

/*
 * The current attempt ended without a result the balancer learns from (the client left, the
 * request could not be sent, the request is freed): its half-open probe claim is freed, and
 * its token estimate is taken back — or, if the backend already streamed an answer, cut to
 * what it can have cost (prompt + every byte received). Idempotent; safe with no attempt.
 */
static void attempt_abandoned(struct aor_request *ar)
{
    struct aor_balancer_candidate *c;
    int64_t received = (int64_t)(ar->bytes_to_client + ar->pending.len);

    if (ar->current < 0)
        return;
    c = current_cand(ar);
    aor_balancer_release_probe(c);
    if (ar->started && ar->status >= 200 && ar->status < 300 && received > 0)
        aor_balancer_settle(
            c, ar->estimate < (int64_t)ar->body_len / 4 + received ? ar->estimate : (int64_t)ar->body_len / 4 + received,
            aor_now_ms());
    else
        aor_balancer_settle(c, -1, aor_now_ms());
}

#define NAME_IS(name, lit) ((name)->len == sizeof(lit) - 1 && memcmp((name)->base, (lit), sizeof(lit) - 1) == 0)

static void start_client_response(struct aor_request *ar)
{
    h2o_req_t *req = ar->req;
    const struct aor_backend_conf *b = ar->cand_backend[ar->current];

    ar->started = 1;
    req->res.status = ar->status;
    req->res.reason = ar->status < 300 ? "OK" : ar->status < 500 ? "Client Error" : "Server Error";
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
    if (ar->paused && ar->pending.len < AOR_STREAM_HIGH_WATER) {
        ar->paused = 0;
        aor_upstream_h1_resume(&ar->xfer);
    }
}

/* the attempt is over (done or cancelled): the credential leaves the request head */
static void end_attempt(struct aor_request *ar)
{
    if (ar->cred_at != NULL) {
        memset(ar->cred_at, 0, ar->cred_len);
        ar->cred_at = NULL;
    }
    ar->paused = 0;
}

/* stops the running transfer; safe from inside its callbacks (upstream_h1 defers the close) */
static void cancel_upstream(struct aor_request *ar)
{
    if (!ar->xfer.active)
        return;
    aor_upstream_h1_cancel(&ar->xfer);
    end_attempt(ar);
}

static void on_stop(h2o_generator_t *gen, h2o_req_t *req)
{
    struct aor_request *ar = H2O_STRUCT_FROM_MEMBER(struct aor_request, generator, gen);

    /* the client went away mid-response; the dispose callback that follows frees */
    cancel_upstream(ar);
    attempt_abandoned(ar);
}

/* 429 and 5xx; 401/403 are the router's credential failing there, not the client's (SPEC §5) */
static int is_failover_status(int status)
{
    return status == 429 || status >= 500 || status == 401 || status == 403;
}

#define MAX_NOT_FOUND_BODY 65536 /* a 404 body longer than this is not Azure's DeploymentNotFound */

static int on_error_member(const char *key, size_t key_len, const char *value, size_t value_len, void *data)
{
    const char *inner;
    size_t inner_len;

    (void)data;
    return key_len == 4 && memcmp(key, "code", 4) == 0 && aor_json_plain_string(value, value_len, &inner, &inner_len) &&
           inner_len == 18 && memcmp(inner, "DeploymentNotFound", 18) == 0;
}

static int on_top_member(const char *key, size_t key_len, const char *value, size_t value_len, void *data)
{
    return key_len == 5 && memcmp(key, "error", 5) == 0 && value_len != 0 && value[0] == '{' &&
           aor_json_scan_object(value, value_len, on_error_member, data) == 1;
}

/* Azure's {"error":{"code":"DeploymentNotFound",...}}: the backend lacks the mapped deployment */
static int is_deployment_not_found(const char *body, size_t len)
{
    return len <= MAX_NOT_FOUND_BODY && aor_json_scan_object(body, len, on_top_member, NULL) == 1;
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
        int64_t until = __atomic_load_n(&ar->cand[i].dep->cooldown_until_ms, __ATOMIC_RELAXED);
        if (until > now && (earliest_cooldown_end == 0 || until < earliest_cooldown_end))
            earliest_cooldown_end = until;
    }
    if (ar->failed == 0 && ar->throttled == 0 && ar->local_failed != 0) {
        /* only the router's own shortage stood in the way: nothing a backend did; try again soon */
        finish_error(ar, AOR_ERR_BACKEND_ERROR, "the router is out of local resources to reach a backend; retry later", 1);
        return;
    }
    if (ar->failed == 0 && (ar->throttled != 0 || earliest_cooldown_end != 0)) {
        /* only throttling stood in the way: tell the client when capacity returns */
        int64_t wait_ms = earliest_cooldown_end > now ? earliest_cooldown_end - now : 1000;
        finish_error(ar, AOR_ERR_BACKENDS_THROTTLED, "every backend serving this deployment is throttled; retry later",
                     (wait_ms + 999) / 1000);
        return;
    }
    finish_error(ar, AOR_ERR_BACKEND_ERROR,
                 ar->attempts != 0       ? "every attempt to reach a backend failed"
                 : ar->cred_skipped != 0 ? "no backend credential is available"
                                         : "no backend is available (circuits open)",
                 0);
}

/* an attempt on `b` abandoned for another backend: the metric and the backend's count (the status page) */
static void count_failover_at(struct aor_balancer_candidate *cand, const struct aor_backend_conf *b, const char *reason)
{
    __atomic_add_fetch(&cand->state->failovers, 1, __ATOMIC_RELAXED);
    aor_metrics_failover(b->name, reason);
}

static void count_failover(struct aor_request *ar, const struct aor_backend_conf *b, const char *reason)
{
    count_failover_at(current_cand(ar), b, reason);
}

static void next_attempt(struct aor_request *ar)
{
    /* the failed attempt's headers are not the answer */
    ar->req->res.headers.size = ar->res_headers_mark;
    ar->pending.len = 0;
    release_resp_budget(ar);
    if (ar->attempts >= ar->conf->limits.max_attempts) {
        give_up(ar, 0);
        return;
    }
    start_attempt(ar);
}

/* the attempt failed before anything reached the client: count it and try elsewhere */
static void attempt_failed(struct aor_request *ar, const char *reason, const char *detail)
{
    const struct aor_backend_conf *b = ar->cand_backend[ar->current];
    struct aor_balancer_policy pol = policy_of(ar->conf);

    AOR_LOG(AOR_LOG_WARN, "proxy", "%s: backend %s attempt %u failed: %s (%s)", ar->id, b->name, ar->attempts, reason,
            detail != NULL ? detail : "-");
    aor_balancer_record(current_cand(ar), &pol, AOR_OUTCOME_FAILURE, 0, aor_now_ms());
    aor_balancer_settle(current_cand(ar), -1, aor_now_ms());
    count_failover(ar, b, reason);
    ++ar->failed;
    ar->last_error = reason;
    next_attempt(ar);
}

/* the attempt ended for a reason of the router's own (upstream_h1's err_local, out of memory): logged
 * with the cause, the request tries elsewhere, the backend's standing is untouched (its probe claim
 * freed, the estimate taken back) */
static void attempt_local_failure(struct aor_request *ar, const char *detail)
{
    const struct aor_backend_conf *b = ar->cand_backend[ar->current];

    AOR_LOG(AOR_LOG_WARN, "proxy", "%s: backend %s attempt %u: local failure, not counted against the backend: %s", ar->id, b->name,
            ar->attempts, detail != NULL ? detail : "-");
    attempt_abandoned(ar);
    count_failover(ar, b, "local");
    ++ar->local_failed;
    ar->last_error = "local";
    next_attempt(ar);
}

/* a 429 or 5xx answer (its body read or dropped): cool down or count, then fail over */
static void attempt_refused(struct aor_request *ar)
{
    const struct aor_backend_conf *b = ar->cand_backend[ar->current];
    struct aor_balancer_policy pol = policy_of(ar->conf);
    int64_t now = aor_now_ms();

    if (ar->status == 429) {
        if (ar->backend_reset_bad != NULL)
            AOR_LOG(AOR_LOG_WARN, "proxy", "%s: backend %s sent %s \"%s\" (%zu bytes): not a duration, ignored", ar->id, b->name,
                    ar->backend_reset_bad, ar->backend_reset_bad_value, ar->backend_reset_bad_len);
        if (ar->cooldown_capped)
            AOR_LOG(AOR_LOG_WARN, "proxy",
                    "%s: backend %s asked for an absurd retry-after or rate-limit reset; cooldown capped at %lld ms", ar->id,
                    b->name, (long long)ar->cooldown_ms);
        aor_balancer_record(current_cand(ar), &pol, AOR_OUTCOME_THROTTLED, ar->cooldown_ms, now);
        aor_coolshare_publish(ar->worker, b, ar->cand_name[ar->current], now + ar->cooldown_ms, now);
        ++ar->throttled;
        ar->last_error = "429";
    } else if (ar->status == 401 || ar->status == 403) {
        /* the router's key or token for this backend is refused: an operator's problem, loudly */
        AOR_LOG(AOR_LOG_WARN, "proxy", "%s: backend %s refused the router's credential (%d); check its key or identity", ar->id,
                b->name, ar->status);
        if (ar->status == 401) { /* a token the backend no longer takes: drop it, fetch another (once per token) */
            aor_cred_refused(&b->cred, ar->cred_serial);
            /* the token this request waited for is gone: it may wait once more, for the next one
             * (another backend on the same identity) — at most once per 401, so per attempt */
            ar->cred_waited = 0;
        }
        aor_balancer_record(current_cand(ar), &pol, AOR_OUTCOME_FAILURE, 0, now);
        ++ar->failed;
        ar->last_error = "credential";
    } else if (ar->status == 404) {
        /* DeploymentNotFound: the config maps the deployment to a name this backend lacks; the backend is up */
        AOR_LOG(AOR_LOG_WARN, "proxy", "%s: backend %s has no deployment %s (DeploymentNotFound); check its deployments mapping",
                ar->id, b->name, ar->cand_name[ar->current]);
        aor_balancer_record(current_cand(ar), &pol, AOR_OUTCOME_SUCCESS, 0, now);
        ++ar->failed;
        ar->last_error = "not_found";
    } else {
        aor_balancer_record(current_cand(ar), &pol, AOR_OUTCOME_FAILURE, 0, now);
        ++ar->failed;
        ar->last_error = "5xx";
    }
    aor_balancer_settle(current_cand(ar), -1, now); /* a refusal costs no tokens */
    count_failover(ar, b, ar->last_error);
    if (ar->status == 429 || ar->status >= 500)
        AOR_LOG(AOR_LOG_INFO, "proxy", "%s: backend %s answered %d, failing over", ar->id, b->name, ar->status);
    next_attempt(ar);
}

/* ---- the transfer's callbacks --------------------------------------------------------- */

static int64_t parse_int64(const char *p, size_t len)
{
    int64_t v = 0;
    size_t i;

    if (len == 0 || len > 18)
        return -1;
    for (i = 0; i != len; ++i) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

#define MAX_CONNECTION_TOKENS 32 /* names a Connection header may declare hop-by-hop; later ones are not honoured */

/* the field names listed by a message's Connection headers, pointing into their values */
struct conn_tokens {
    h2o_iovec_t tok[MAX_CONNECTION_TOKENS];
    size_t n;
};

/* collects the comma-separated tokens (OWS trimmed) of every Connection header among `headers` */
static void connection_tokens(const h2o_header_t *headers, size_t num_headers, struct conn_tokens *out)
{
    size_t i, k, start, end;

    out->n = 0;
    for (i = 0; i != num_headers; ++i) {
        const h2o_iovec_t *v = &headers[i].value;
        if (!(headers[i].name == &H2O_TOKEN_CONNECTION->buf ||
              (headers[i].name->len == 10 && strncasecmp(headers[i].name->base, "connection", 10) == 0)))
            continue;
        for (k = 0; k < v->len && out->n != MAX_CONNECTION_TOKENS;) {
            while (k < v->len && (v->base[k] == ' ' || v->base[k] == '\t' || v->base[k] == ','))
                ++k;
            start = k;
            while (k < v->len && v->base[k] != ',')
                ++k;
            end = k;
            while (end > start && (v->base[end - 1] == ' ' || v->base[end - 1] == '\t'))
                --end;
            if (end != start)
                out->tok[out->n++] = h2o_iovec_init(v->base + start, end - start);
        }
    }
}

/* hop-by-hop (RFC 9110 §7.6.1): the fixed ones, any Proxy-*, and what a Connection header names */
static int hop_by_hop(const h2o_iovec_t *name, const struct conn_tokens *conn)
{
    size_t i;

    if (h2o_iovec_is_token(name)) {
        const h2o_token_t *t = (const h2o_token_t *)name;
        if (t == H2O_TOKEN_CONNECTION || t == H2O_TOKEN_KEEP_ALIVE || t == H2O_TOKEN_TE || t == H2O_TOKEN_TRANSFER_ENCODING ||
            t == H2O_TOKEN_UPGRADE || t == H2O_TOKEN_HTTP2_SETTINGS)
            return 1;
    } else if (name->len == 7 && strncasecmp(name->base, "trailer", 7) == 0) {
        return 1;
    } else if (name->len == 10 && strncasecmp(name->base, "keep-alive", 10) == 0) {
        return 1;
    }
    if (name->len >= 6 && strncasecmp(name->base, "proxy-", 6) == 0)
        return 1;
    for (i = 0; i != conn->n; ++i)
        if (conn->tok[i].len == name->len && strncasecmp(conn->tok[i].base, name->base, name->len) == 0)
            return 1;
    return 0;
}

static int hop_by_hop_or_private(const h2o_iovec_t *name, const struct conn_tokens *conn)
{
    if (hop_by_hop(name, conn))
        return 1;
    if (h2o_iovec_is_token(name)) {
        const h2o_token_t *t = (const h2o_token_t *)name;
        /* proxy_should_drop_for_res: connection, date, keep-alive, transfer-encoding, upgrade */
        return t->proxy_should_drop_for_res || t == H2O_TOKEN_CONTENT_LENGTH || t == H2O_TOKEN_SERVER;
    }
    /* the router's own names: the client sees exactly one of each, the router's. Every
     * x-ratelimit-* of the backend (remaining, limit, reset) describes the backend's capacity,
     * not the tenant's: beside the tenant's own remaining-* it would mislead, and it tells every
     * tenant how big the shared deployments are */
    return (name->len >= 12 && strncasecmp(name->base, "x-ratelimit-", 12) == 0) || NAME_IS(name, "x-request-id") ||
           (name->len >= 14 && strncasecmp(name->base, "x-aoai-router-", 14) == 0);
}

/* a backend's request id may be shown and logged: [A-Za-z0-9._:-], 1..AOR_REQUEST_ID_MAX bytes */
static int sane_request_id(const h2o_iovec_t *v)
{
    size_t i;

    if (v->len == 0 || v->len > AOR_REQUEST_ID_MAX)
        return 0;
    for (i = 0; i != v->len; ++i) {
        char c = v->base[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.' ||
              c == ':'))
            return 0;
    }
    return 1;
}

/* an x-ratelimit-reset-* value as ms, or -1; one that is not a duration is remembered for the log */
static int64_t reset_header(struct aor_request *ar, const char *header, const h2o_iovec_t *value)
{
    int64_t ms = aor_ratelimit_reset_ms(value->base, value->len);
    size_t i, n = 0;

    if (ms >= 0 || ar->backend_reset_bad != NULL)
        return ms;
    ar->backend_reset_bad = header;
    ar->backend_reset_bad_len = value->len;
    for (i = 0; i != value->len && n + 1 < sizeof(ar->backend_reset_bad_value); ++i)
        ar->backend_reset_bad_value[n++] = value->base[i] >= 0x20 && value->base[i] < 0x7f ? value->base[i] : '?';
    ar->backend_reset_bad_value[n] = '\0';
    return ms;
}

/* a backend's rate-limit figures of this attempt go to its deployment's headroom */
static void report_limits(struct aor_request *ar, int64_t now)
{
    struct aor_deployment_state *dep = current_cand(ar)->dep;

    if (ar->backend_remaining_tokens >= 0)
        aor_balancer_report_remaining(dep, ar->backend_remaining_tokens, ar->backend_reset_tokens_ms, now);
    aor_balancer_report_requests(dep, ar->backend_remaining_requests, ar->backend_reset_requests_ms, now);
    if (ar->backend_reset_bad != NULL && ar->status != 429) /* a 429 logs it with its cooldown */
        AOR_LOG(AOR_LOG_DEBUG, "proxy", "%s: backend %s sent %s \"%s\" (%zu bytes): not a duration, ignored", ar->id,
                ar->cand_backend[ar->current]->name, ar->backend_reset_bad, ar->backend_reset_bad_value, ar->backend_reset_bad_len);
}

static void on_upstream_head(struct aor_upstream_h1_xfer *x, int status, const h2o_header_t *headers, size_t num_headers)
{
    struct aor_request *ar = H2O_STRUCT_FROM_MEMBER(struct aor_request, xfer, x);
    h2o_req_t *req = ar->req;
    const char *ct = NULL, *ra = NULL, *ra_ms = NULL;
    size_t ct_len = 0, ra_len = 0, ra_ms_len = 0, i;
    int failover = is_failover_status(status);
    struct conn_tokens conn;

    ar->status = status;
    ar->backend_request_id[0] = '\0';
    connection_tokens(headers, num_headers, &conn);
    for (i = 0; i != num_headers; ++i) {
        const h2o_iovec_t *name = headers[i].name, *value = &headers[i].value;
        if (name == &H2O_TOKEN_CONTENT_TYPE->buf) {
            ct = value->base;
            ct_len = value->len;
        } else if (name == &H2O_TOKEN_RETRY_AFTER->buf) {
            ra = value->base;
            ra_len = value->len;
        } else if (NAME_IS(name, "retry-after-ms")) {
            ra_ms = value->base;
            ra_ms_len = value->len;
        } else if (NAME_IS(name, "x-ratelimit-remaining-tokens")) {
            ar->backend_remaining_tokens = parse_int64(value->base, value->len);
        } else if (NAME_IS(name, "x-ratelimit-remaining-requests")) {
            ar->backend_remaining_requests = parse_int64(value->base, value->len);
        } else if (NAME_IS(name, "x-ratelimit-reset-tokens")) {
            ar->backend_reset_tokens_ms = reset_header(ar, "x-ratelimit-reset-tokens", value);
        } else if (NAME_IS(name, "x-ratelimit-reset-requests")) {
            ar->backend_reset_requests_ms = reset_header(ar, "x-ratelimit-reset-requests", value);
        } else if (NAME_IS(name, "x-request-id") && ar->backend_request_id[0] == '\0' && sane_request_id(value)) {
            /* the backend's own id: logged, and shown under the router's name for it (SPEC §4) */
            memcpy(ar->backend_request_id, value->base, value->len);
            ar->backend_request_id[value->len] = '\0';
            if (!failover)
                h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-aoai-router-backend-request-id"), 0, NULL,
                                      h2o_strdup(&req->pool, value->base, value->len).base, value->len);
        }
        if (failover || hop_by_hop_or_private(name, &conn))
            continue;
        /* the bytes live in the socket's buffer: the client's response gets copies */
        if (h2o_iovec_is_token(name))
            h2o_add_header(&req->pool, &req->res.headers, (const h2o_token_t *)name, NULL,
                           h2o_strdup(&req->pool, value->base, value->len).base, value->len);
        else
            h2o_add_header_by_str(&req->pool, &req->res.headers, h2o_strdup(&req->pool, name->base, name->len).base, name->len, 0,
                                  NULL, h2o_strdup(&req->pool, value->base, value->len).base, value->len);
    }
    if (failover) {
        ar->mode = AOR_MODE_DISCARD;
        if (status == 429) {
            /* without a usable retry-after, OpenAI's x-ratelimit-reset-* say when the limit that ran out refills */
            int64_t reset = aor_ratelimit_cooldown_ms(ar->backend_remaining_tokens, ar->backend_reset_tokens_ms,
                                                      ar->backend_remaining_requests, ar->backend_reset_requests_ms);
            ar->cooldown_ms = aor_retry_after_ms(ra_ms, ra_ms_len, ra, ra_len, aor_now_ms(),
                                                 reset >= 0 ? reset : (int64_t)ar->conf->limits.default_cooldown_ms,
                                                 (int64_t)ar->conf->limits.max_cooldown_ms, &ar->cooldown_capped);
        }
        return;
    }
    ar->mode = ct_len >= 17 && strncasecmp(ct, "text/event-stream", 17) == 0 ? AOR_MODE_STREAM : AOR_MODE_BUFFER;
    if (ar->mode != AOR_MODE_STREAM)
        ar->strip_usage = 0; /* only an SSE answer is filtered */
}

/* one whole SSE line (with its line end) of a stream whose usage chunk the client did not ask for */
static int relay_line(struct aor_request *ar, const char *line, size_t len)
{
    size_t l = len;
    const char *u;

    if (l != 0 && line[l - 1] == '\n')
        --l;
    if (l != 0 && line[l - 1] == '\r')
        --l;
    if (ar->sse_dropping) {
        ar->sse_dropping = 0;
        if (l == 0)
            return 0; /* the blank line that ended the dropped event */
    }
    if (l > 5 && memcmp(line, "data:", 5) == 0) {
        if (memmem(line, l, "\"choices\":[]", 12) != NULL && memmem(line, l, "\"usage\":{", 9) != NULL) {
            ar->sse_dropping = 1; /* the usage-only chunk: the router's, not the client's */
            return 0;
        }
        /* every other chunk carries "usage":null once usage is asked for: not what the client asked either */
        if ((u = memmem(line, l, ",\"usage\":null", 13)) != NULL)
            return buf_append(&ar->pending, line, (size_t)(u - line)) != 0 ||
                           buf_append(&ar->pending, u + 13, len - (size_t)(u - line) - 13) != 0
                       ? -1
                       : 0;
    }
    return buf_append(&ar->pending, line, len);
}

/* queues backend bytes for the client; with strip_usage line by line (only a partial line waits) */
static int relay(struct aor_request *ar, const char *data, size_t len)
{
    if (!ar->strip_usage)
        return buf_append(&ar->pending, data, len);
    while (len != 0) {
        const char *nl = memchr(data, '\n', len);
        size_t take;
        if (nl == NULL) {
            if (ar->carry.len + len > AOR_SSE_MAX_LINE) {
                /* a line this long is no chunk we know: stop filtering, relay everything as is */
                ar->strip_usage = 0;
                if (buf_append(&ar->pending, ar->carry.base, ar->carry.len) != 0)
                    return -1;
                ar->carry.len = 0;
                return buf_append(&ar->pending, data, len);
            }
            return buf_append(&ar->carry, data, len);
        }
        take = (size_t)(nl - data) + 1;
        if (ar->carry.len != 0) {
            if (buf_append(&ar->carry, data, take) != 0 || relay_line(ar, ar->carry.base, ar->carry.len) != 0)
                return -1;
            ar->carry.len = 0;
        } else if (relay_line(ar, data, take) != 0) {
            return -1;
        }
        data += take;
        len -= take;
    }
    return 0;
}

/* the last AOR_USAGE_TAIL..2*AOR_USAGE_TAIL bytes of a large JSON reply */
static void keep_tail(struct aor_request *ar, const char *data, size_t len)
{
    if (len >= AOR_USAGE_TAIL) {
        ar->tail.len = 0;
        data += len - AOR_USAGE_TAIL;
        len = AOR_USAGE_TAIL;
    }
    if (ar->tail.len + len > 2 * AOR_USAGE_TAIL) {
        size_t keep = AOR_USAGE_TAIL - len;
        memmove(ar->tail.base, ar->tail.base + ar->tail.len - keep, keep);
        ar->tail.len = keep;
    }
    buf_append(&ar->tail, data, len); /* out of memory: the usage may be missed, never the answer */
}

static void on_upstream_body(struct aor_upstream_h1_xfer *x, const char *data, size_t len)
{
    struct aor_request *ar = H2O_STRUCT_FROM_MEMBER(struct aor_request, xfer, x);

    switch (ar->mode) {
    case AOR_MODE_HEADERS:
        return;
    case AOR_MODE_DISCARD:
        /* an error body: read to keep the connection reusable, but bounded */
        if ((ar->discarded += len) > MAX_DISCARDED_BODY) {
            cancel_upstream(ar);
            report_limits(ar, aor_now_ms());
            attempt_refused(ar); /* may start the next attempt on ar->xfer: allowed inside its callback */
        }
        return;
    case AOR_MODE_BUFFER:
        if (ar->pending.len + len <= AOR_BUFFER_MAX && take_resp_budget(ar, len)) {
            if (buf_append(&ar->pending, data, len) != 0) {
                cancel_upstream(ar);
                attempt_local_failure(ar, "out of memory");
            }
            return;
        }
        /* too large to hold, or the budget is spent: stream what we have and the rest; its usage
         * is looked for in the part held now and, at the end, in the last AOR_USAGE_TAIL bytes
         * (issue 8: a 30 MB embeddings answer is counted too) */
        ar->mode = AOR_MODE_STREAM;
        ar->json_overflow = 1;
        aor_usage_from_fragment(ar->pending.base, ar->pending.len, &ar->usage);
        break;
    case AOR_MODE_STREAM:
        break;
    }
    if (ar->first_byte_ns == 0)
        ar->first_byte_ns = aor_mono_ns();
    if (ar->json_overflow)
        keep_tail(ar, data, len);
    else
        aor_sse_feed(&ar->sse, data, len);
    if (relay(ar, data, len) != 0) {
        /* out of memory mid-stream: end the client's response as broken */
        cancel_upstream(ar);
        if (!ar->started) {
            attempt_local_failure(ar, "out of memory");
            return;
        }
        ar->final_status = 502;
        ar->final_sent = 1;
        aor_pipeline_finish(ar);
        if (ar->sending)
            ar->abort_after_send = 1;
        else
            h2o_send(ar->req, NULL, 0, H2O_SEND_STATE_ERROR);
        return;
    }
    if (!ar->started)
        start_client_response(ar);
    ar->in_upstream_cb = 1; /* h2o_send must not be able to free `ar` under us */
    flush(ar);
    ar->in_upstream_cb = 0;
    if (ar->req == NULL) { /* disposed meanwhile: the transfer was cancelled with it */
        aor_pipeline_maybe_free(ar);
        return;
    }
    if (ar->pending.len >= AOR_STREAM_HIGH_WATER && !ar->paused) {
        /* the client is behind by a send and this much more: stop reading the backend */
        ar->paused = 1;
        aor_upstream_h1_pause(x);
    }
}

static void on_upstream_done(struct aor_upstream_h1_xfer *x, const char *errstr)
{
    struct aor_request *ar = H2O_STRUCT_FROM_MEMBER(struct aor_request, xfer, x);
    const struct aor_backend_conf *b = ar->cand_backend[ar->current];
    struct aor_balancer_policy pol = policy_of(ar->conf);
    int64_t now = aor_now_ms();

    end_attempt(ar);
    if (ar->req == NULL) {
        attempt_abandoned(ar);
        aor_pipeline_maybe_free(ar);
        return;
    }
    report_limits(ar, now);

    if (errstr == aor_upstream_h1_err_local && !ar->started) {
        attempt_local_failure(ar, x->detail);
        return;
    }
    if (errstr != NULL && !ar->started) {
        /* nothing reached the client (a truncated answer included): this attempt failed, the request may go elsewhere */
        attempt_failed(ar, errstr == aor_upstream_h1_err_timeout ? "timeout" : "connect", x->detail);
        return;
    }
    if (errstr != NULL) {
        /* mid-stream: the client already has part of the answer, so it gets an incomplete one
         * (HTTP/2 RST_STREAM, HTTP/1.1 a close without the last chunk), and the backend is blamed */
        AOR_LOG(AOR_LOG_WARN, "proxy", "%s: backend %s failed mid-response: %s (%s)", ar->id, b->name, errstr,
                x->detail != NULL ? x->detail : "-");
        aor_balancer_record(current_cand(ar), &pol, AOR_OUTCOME_FAILURE, 0, now);
        attempt_abandoned(ar); /* what was streamed may have cost tokens: bounded by the bytes */
        ar->final_status = 502;
        ar->final_sent = 1;
        aor_pipeline_finish(ar);
        if (ar->sending)
            ar->abort_after_send = 1; /* h2o allows no send before proceed */
        else
            h2o_send(ar->req, NULL, 0, H2O_SEND_STATE_ERROR);
        return;
    }
    if (ar->mode == AOR_MODE_DISCARD ||
        (ar->mode == AOR_MODE_BUFFER && ar->status == 404 && is_deployment_not_found(ar->pending.base, ar->pending.len))) {
        attempt_refused(ar);
        return;
    }

    aor_balancer_record(current_cand(ar), &pol, AOR_OUTCOME_SUCCESS, 0, now);
    aor_metrics_upstream_duration(b->name, (double)(aor_mono_ns() - ar->upstream_started_ns) / 1e9);
    if (ar->mode == AOR_MODE_STREAM && ar->first_byte_ns != 0) {
        aor_metrics_ttfb(b->name, (double)(ar->first_byte_ns - ar->started_ns) / 1e9);
        if (!ar->json_overflow && ar->status >= 200 && ar->status < 300) /* SSE, not a large JSON answer */
            ar->ttft_ns = ar->first_byte_ns > ar->started_ns ? ar->first_byte_ns - ar->started_ns : 1;
    }
    if (ar->mode == AOR_MODE_BUFFER) {
        aor_usage_from_json(ar->pending.base, ar->pending.len, &ar->usage);
        ar->req->res.content_length = ar->pending.len;
        if (ar->first_byte_ns == 0)
            ar->first_byte_ns = aor_mono_ns();
        start_client_response(ar);
    } else if (ar->json_overflow) {
        aor_usage_from_fragment(ar->tail.base, ar->tail.len, &ar->usage);
    } else if (ar->sse.usage.found) {
        ar->usage = ar->sse.usage;
    }
    if (ar->carry.len != 0) { /* the stream's last line had no line end: it goes as it came */
        buf_append(&ar->pending, ar->carry.base, ar->carry.len);
        ar->carry.len = 0;
    }
    if (!ar->started)
        start_client_response(ar);
    if (ar->usage.found) /* replace the estimate charged at the start of the attempt by what was spent */
        aor_balancer_settle(current_cand(ar), ar->usage.total, now);
    else /* a 2xx without usage: at most prompt + what came back; another answer (4xx): nothing */
        attempt_abandoned(ar);
    ar->upstream_done = 1;
    flush(ar);
}

/* ---- the request ---------------------------------------------------------------------- */

static int skip_request_header(struct aor_request *ar, const h2o_iovec_t *name, const struct conn_tokens *conn)
{
    size_t i;

    if (hop_by_hop(name, conn))
        return 1;
    if (h2o_iovec_is_token(name)) {
        const h2o_token_t *t = (const h2o_token_t *)name;
        /* proxy_should_drop_for_req: connection, http2-settings, keep-alive, proxy-authenticate,
         * proxy-authorization, te, transfer-encoding, upgrade */
        return t->proxy_should_drop_for_req || t == H2O_TOKEN_HOST || t == H2O_TOKEN_CONTENT_LENGTH || t == H2O_TOKEN_EXPECT ||
               t == H2O_TOKEN_ACCEPT_ENCODING || t == H2O_TOKEN_AUTHORIZATION || t == H2O_TOKEN_COOKIE ||
               t == H2O_TOKEN_X_FORWARDED_FOR || t->buf.base[0] == ':';
    }
    /* the client's forwarding claims are not trusted: the router writes its own X-Forwarded-For/-Proto */
    if (name->len == 0 || name->base[0] == ':' || NAME_IS(name, "api-key") || NAME_IS(name, "ocp-apim-subscription-key") ||
        NAME_IS(name, "x-request-id") || NAME_IS(name, "forwarded") || NAME_IS(name, "x-forwarded-for") ||
        NAME_IS(name, "x-forwarded-proto") || NAME_IS(name, "x-forwarded-host") || NAME_IS(name, "x-forwarded-port") ||
        NAME_IS(name, "x-real-ip"))
        return 1;
    for (i = 0; i != ar->conf->auth.num_key_headers; ++i)
        if (strlen(ar->conf->auth.key_headers[i]) == name->len &&
            strncasecmp(ar->conf->auth.key_headers[i], name->base, name->len) == 0)
            return 1;
    return 0;
}

/* a header value may go on the wire as is: no CR, LF or other control byte but tab */
static int is_clean_value(const h2o_iovec_t *v)
{
    size_t i;

    for (i = 0; i != v->len; ++i) {
        unsigned char c = (unsigned char)v->base[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return 0;
    }
    return 1;
}

static char *put(char *p, const void *src, size_t len)
{
    memcpy(p, src, len);
    return p + len;
}

#define PUT_LIT(p, lit) put((p), (lit), sizeof(lit) - 1)

static char *put_dec(char *p, size_t v)
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

/* the client connection's peer address, for X-Forwarded-For (IPv4-mapped IPv6 as IPv4); its length, 0 if unknown */
static size_t peer_address(h2o_req_t *req, char *buf /* INET6_ADDRSTRLEN */)
{
    struct sockaddr_storage ss;
    const void *addr = NULL;
    int family = AF_INET;

    if (req->conn->callbacks->get_peername(req->conn, (struct sockaddr *)&ss) == 0)
        return 0;
    if (ss.ss_family == AF_INET) {
        addr = &((struct sockaddr_in *)&ss)->sin_addr;
    } else if (ss.ss_family == AF_INET6) {
        const struct in6_addr *a6 = &((struct sockaddr_in6 *)&ss)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a6)) {
            addr = a6->s6_addr + 12;
        } else {
            addr = a6;
            family = AF_INET6;
        }
    }
    if (addr == NULL || inet_ntop(family, addr, buf, INET6_ADDRSTRLEN) == NULL)
        return 0;
    return strlen(buf);
}

/*
 * The HTTP/1.1 request head for this attempt, in req->pool: request line, Host, the
 * body's length, the client's headers that may go on (end-to-end ones, no credential, no
 * forwarding claim), x-request-id, x-forwarded-for/-proto and the backend credential
 * (copied from `cred_in`; its bytes are wiped from the head when the attempt ends). 0.
 */
static int build_head(struct aor_request *ar, const struct aor_cred_header *cred_in, const struct aor_upstream_h1_target *t,
                      const char *path, size_t path_len, int has_body, size_t body_len, h2o_iovec_t *head)
{
    h2o_req_t *req = ar->req;
    const struct aor_cred_header cred = *cred_in;
    size_t method_len = strlen(ar->method), id_len = strlen(ar->id), cap, i, peer_len = 0;
    struct conn_tokens conn;
    char *base, *p, peer[INET6_ADDRSTRLEN];

    connection_tokens(req->headers.entries, req->headers.size, &conn);
    peer_len = peer_address(req, peer);
    cap = method_len + 1 + t->path_prefix.len + path_len + sizeof(" HTTP/1.1\r\nhost: \r\n") + t->authority.len +
          sizeof("content-length: \r\n") + 20 + sizeof("x-request-id: \r\n") + id_len + sizeof("\r\n") +
          sizeof("x-forwarded-for: \r\n") + sizeof(peer) + sizeof("x-forwarded-proto: \r\n") + req->scheme->name.len;
    if (cred.name != NULL)
        cap += cred.name_len + 2 + cred.prefix_len + cred.secret_len + 2;
    for (i = 0; i != req->headers.size; ++i)
        cap += req->headers.entries[i].name->len + 2 + req->headers.entries[i].value.len + 2;
    base = p = h2o_mem_alloc_pool(&req->pool, cap);

    p = put(p, ar->method, method_len);
    *p++ = ' ';
    p = put(p, t->path_prefix.base, t->path_prefix.len);
    p = put(p, path, path_len);
    p = PUT_LIT(p, " HTTP/1.1\r\nhost: ");
    p = put(p, t->authority.base, t->authority.len);
    p = PUT_LIT(p, "\r\n");
    if (has_body) {
        p = PUT_LIT(p, "content-length: ");
        p = put_dec(p, body_len);
        p = PUT_LIT(p, "\r\n");
    }
    for (i = 0; i != req->headers.size; ++i) {
        const h2o_header_t *h = req->headers.entries + i;
        if (skip_request_header(ar, h->name, &conn) || h->name->len + h->value.len + 4 > MAX_REQUEST_HEADER_LINE ||
            !is_clean_value(&h->value))
            continue;
        p = put(p, h->name->base, h->name->len);
        p = PUT_LIT(p, ": ");
        p = put(p, h->value.base, h->value.len);
        p = PUT_LIT(p, "\r\n");
    }
    p = PUT_LIT(p, "x-request-id: ");
    p = put(p, ar->id, id_len);
    p = PUT_LIT(p, "\r\n");
    if (peer_len != 0) {
        p = PUT_LIT(p, "x-forwarded-for: ");
        p = put(p, peer, peer_len);
        p = PUT_LIT(p, "\r\n");
    }
    p = PUT_LIT(p, "x-forwarded-proto: ");
    p = put(p, req->scheme->name.base, req->scheme->name.len);
    p = PUT_LIT(p, "\r\n");
    if (cred.name != NULL) {
        p = put(p, cred.name, cred.name_len);
        p = PUT_LIT(p, ": ");
        ar->cred_at = p;
        p = put(p, cred.prefix, cred.prefix_len);
        p = put(p, cred.secret, cred.secret_len);
        ar->cred_len = (size_t)(p - ar->cred_at);
        p = PUT_LIT(p, "\r\n");
    }
    p = PUT_LIT(p, "\r\n");
    *head = h2o_iovec_init(base, (size_t)(p - base));
    return 0;
}

/* a stream whose client did not ask for usage, of an operation that takes stream_options */
static int wants_stream_usage(const struct aor_request *ar)
{
    const struct aor_route *r = &ar->route;

    if (!ar->stream || !ar->body_is_json || ar->rb.include_usage || r->kind == AOR_ROUTE_RAW || r->op == NULL)
        return 0;
    return (r->op_len == 16 && memcmp(r->op, "chat/completions", 16) == 0) ||
           (r->op_len == 11 && memcmp(r->op, "completions", 11) == 0);
}

/*
 * The body for this backend: the client's, or with `model` set to the backend's name for the
 * deployment, and for a stream whose client did not ask for usage (no stream_options, null,
 * or include_usage false/null/absent), asking for stream_options.include_usage (the usage
 * chunk is then dropped on the way back).
 */
static int attempt_body(struct aor_request *ar, const struct aor_backend_conf *b, const char *name, const char **body, size_t *len)
{
    size_t name_len = strlen(name), cap;
    const char *src = ar->body;
    size_t src_len = ar->body_len;
    const struct aor_reqbody *rb = &ar->rb;
    struct aor_reqbody urb;
    char *usage_body = NULL, *tmp;
    int n;

    free(ar->attempt_body);
    ar->attempt_body = NULL;
    ar->strip_usage = wants_stream_usage(ar);
    ar->sse_dropping = 0;
    ar->carry.len = 0;
    if (ar->strip_usage) {
        cap = src_len + AOR_REQBODY_STREAM_USAGE_EXTRA;
        if ((usage_body = malloc(cap)) == NULL ||
            (n = aor_reqbody_with_stream_usage(src, src_len, rb, usage_body, cap, &urb)) < 0) {
            free(usage_body);
            return -1;
        }
        src = usage_body;
        src_len = (size_t)n;
        rb = &urb;
    }
    if (!(!ar->body_is_json || ar->deployment[0] == '\0' || ar->route.kind == AOR_ROUTE_RAW ||
          (ar->route.kind != AOR_ROUTE_V1 && b->provider != AOR_PROVIDER_OPENAI))) {
        cap = src_len + name_len + 16;
        if ((tmp = malloc(cap)) == NULL || (n = aor_reqbody_with_model(src, src_len, rb, name, name_len, tmp, cap)) < 0) {
            free(tmp);
            free(usage_body);
            return -1;
        }
        free(usage_body);
        usage_body = tmp;
        src = tmp;
        src_len = (size_t)n;
    }
    ar->attempt_body = usage_body;
    *body = src;
    *len = src_len;
    return 0;
}

/* the path may go into the request line: no space or control byte */
static int is_clean_path(const char *p, size_t len)
{
    size_t i;

    for (i = 0; i != len; ++i)
        if ((unsigned char)p[i] <= 0x20 || p[i] == 0x7f)
            return 0;
    return 1;
}

/* the credential a request waited for is there, failed, or the wait is over: pick again */
static void on_cred_ready(struct aor_cred_waiter *waiter)
{
    struct aor_request *ar = H2O_STRUCT_FROM_MEMBER(struct aor_request, cred_wait, waiter);

    if (ar->req == NULL) /* never: the dispose cancels the wait */
        return;
    start_attempt(ar);
}

static void start_attempt(struct aor_request *ar)
{
    struct aor_worker *w = ar->worker;
    int64_t earliest = 0, now = aor_now_ms();
    const struct aor_backend_conf *b;
    const struct aor_upstream_h1_target *t;
    const char *body, *name;
    size_t body_len;
    h2o_iovec_t head;
    char path[4096];
    int pick, n, is_get, is_head, rc;
    struct aor_balancer_policy pol;
    struct aor_cred_header cred;

    pol = policy_of(ar->conf);
    for (;;) {
        pick = aor_balancer_pick(ar->cand, ar->num_cand, &pol, now, aor_worker_random(w), &earliest);
        if (pick < 0) {
            give_up(ar, earliest);
            return;
        }
        b = ar->cand_backend[pick];
        rc = aor_cred_header(b, &cred);
        /* no token for this backend now: nothing was sent, so no attempt is spent and its circuit is
         * not charged. While the first token is on its way the request waits for it (once, bounded);
         * otherwise the backend is skipped like a broken one */
        if (rc == AOR_CRED_PENDING && !ar->cred_waited) {
            if (aor_cred_wait(w->cred_waitq, &b->cred, &ar->cred_wait, ar->conf->limits.connect_timeout_ms, on_cred_ready) == 0) {
                aor_balancer_release_probe(&ar->cand[pick]);
                ar->cred_waited = 1;
                return;
            }
            rc = aor_cred_header(b, &cred); /* not queued: the token may have come meanwhile */
        }
        if (rc == AOR_CRED_OK)
            break;
        aor_balancer_release_probe(&ar->cand[pick]);
        ar->cand[pick].tried = 1;
        ++ar->failed;
        ++ar->cred_skipped;
        ar->last_error = "credential";
        count_failover_at(&ar->cand[pick], b, "credential");
        AOR_LOG(AOR_LOG_DEBUG, "proxy", "%s: backend %s skipped: no valid credential token", ar->id, b->name);
    }
    /* from here on, every way out of this attempt ends its probe claim and its charge:
     * aor_balancer_record() + settle, or attempt_abandoned() */
    ar->current = pick;
    ar->cand[pick].tried = 1;
    ++ar->attempts;
    name = ar->cand_name[pick];
    aor_balancer_charge(&ar->cand[pick], ar->estimate, now);

    if ((n = aor_route_upstream_path(&ar->route, b->provider, name, strlen(name), path, sizeof(path))) < 0) {
        aor_cred_header_release(&cred);
        attempt_abandoned(ar);
        ++ar->failed;
        next_attempt(ar);
        return;
    }
    if (!is_clean_path(path, (size_t)n)) {
        aor_cred_header_release(&cred);
        attempt_abandoned(ar);
        finish_error(ar, AOR_ERR_INVALID_REQUEST, "the request path has bytes that cannot be forwarded", 0);
        return;
    }
    is_get = strcmp(ar->method, "GET") == 0;
    is_head = strcmp(ar->method, "HEAD") == 0;
    ar->status = 0;
    ar->mode = AOR_MODE_HEADERS;
    ar->json_overflow = 0;
    ar->tail.len = 0;
    ar->discarded = 0;
    ar->cooldown_ms = 0;
    ar->cooldown_capped = 0;
    ar->backend_remaining_tokens = -1;
    ar->backend_remaining_requests = -1;
    ar->backend_reset_tokens_ms = -1;
    ar->backend_reset_requests_ms = -1;
    ar->backend_reset_bad = NULL;
    ar->upstream_started_ns = aor_mono_ns();
    ar->cred_serial = cred.serial;
    rc = (t = aor_upstream_h1_target(w->upstream_h1, b->url, strlen(b->url))) == NULL ||
         attempt_body(ar, b, name, &body, &body_len) != 0 ||
         build_head(ar, &cred, t, path, (size_t)n, !is_get && !is_head, body_len, &head) != 0;
    aor_cred_header_release(&cred); /* the head holds its copy, wiped when the attempt ends */
    if (rc) {
        /* out of memory or an unusable URL: counts as a failed attempt on this backend */
        AOR_LOG(AOR_LOG_WARN, "proxy", "%s: backend %s: could not prepare the attempt", ar->id, b->name);
        aor_balancer_record(current_cand(ar), &pol, AOR_OUTCOME_FAILURE, 0, now);
        aor_balancer_settle(current_cand(ar), -1, now);
        ++ar->failed;
        next_attempt(ar);
        return;
    }
    ar->xfer.on_head = on_upstream_head;
    ar->xfer.on_body = on_upstream_body;
    ar->xfer.on_done = on_upstream_done;
    if (aor_upstream_h1_start(w->upstream_h1, &ar->xfer, t, head,
                              is_get || is_head ? h2o_iovec_init(NULL, 0) : h2o_iovec_init(body, body_len), is_head,
                              ar->conf->limits.connect_timeout_ms, ar->conf->limits.upstream_timeout_ms,
                              ar->conf->limits.max_backend_connections) != 0) {
        end_attempt(ar);
        attempt_local_failure(ar, ar->xfer.detail);
    }
}

void aor_proxy_start(struct aor_request *ar)
{
    ar->generator.proceed = on_proceed;
    ar->generator.stop = on_stop;
    ar->current = -1;
    ar->res_headers_mark = ar->req->res.headers.size; /* what the pipeline added; the backend's come after */
    start_attempt(ar);
}

void aor_proxy_on_dispose(struct aor_request *ar)
{
    aor_cred_wait_cancel(&ar->cred_wait);
    cancel_upstream(ar);
    attempt_abandoned(ar);
}

void aor_proxy_free(struct aor_request *ar)
{
    size_t i;
    int64_t now = aor_now_ms();

    /* whatever path led here, no probe claim, charge or deployment entry outlives the request */
    attempt_abandoned(ar);
    for (i = 0; i != ar->num_cand; ++i) {
        aor_balancer_release_probe(&ar->cand[i]);
        aor_balancer_settle(&ar->cand[i], -1, now);
        aor_backend_deployment_release(ar->cand[i].dep, now);
        ar->cand[i].dep = NULL;
    }
    release_resp_budget(ar);
    buf_free(&ar->inflight);
    buf_free(&ar->pending);
    aor_sse_dispose(&ar->sse);
    buf_free(&ar->carry);
    buf_free(&ar->tail);
    free(ar->attempt_body);
}
