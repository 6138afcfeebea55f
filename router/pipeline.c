/*
 * pipeline.c — see pipeline.h. One function per stage, called in order:
 *
 *   on_req ─ route ─┬─ /healthz /readyz /metrics (answered here)
 *                   └─ data plane: read_body → authenticate → admit → candidates
 *                      → aor_proxy_start (select backend, proxy/stream, fail over)
 *                      → aor_pipeline_finish (account, log)
 */
#include <stdlib.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include "accesslog.h"
#include "admit.h"
#include "backend.h"
#include "balancer.h"
#include "config.h"
#include "cred.h"
#include "errors.h"
#include "log.h"
#include "metrics.h"
#include "status.h"
#include "pipeline.h"
#include "pipeline_internal.h"
#include "jwks.h"
#include "proxy.h"
#include "redis.h"
#include "request.h"
#include "routes.h"
#include "server.h"

#define AOR_H1_MAX_HEADERS 128 /* h2o reads at most 100 */

static struct aor_worker *worker_of(h2o_req_t *req)
{
    return H2O_STRUCT_FROM_MEMBER(struct aor_worker, ctx, req->conn->ctx);
}

/* ---- request id ------------------------------------------------------------------ */

static int valid_request_id(const char *s, size_t len)
{
    size_t i;

    if (len == 0 || len > AOR_REQUEST_ID_MAX)
        return 0;
    for (i = 0; i != len; ++i) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.' ||
              c == ':'))
            return 0;
    }
    return 1;
}

/* `digits` lower-case hex digits of `v` at `p`; returns the end */
static char *put_hex(char *p, uint32_t v, int digits)
{
    static const char hex[] = "0123456789abcdef";

    for (int i = digits - 1; i >= 0; --i, v >>= 4)
        p[i] = hex[v & 0xf];
    return p + digits;
}

/* a fresh UUID-shaped id (version 4, variant 10): 8-4-4-4-12 hex digits. Written by hand: with
 * snprintf it cost ~2,900 instructions, 5 % of a proxied request (callgrind, bench/README.md) */
static void new_request_id(struct aor_worker *w, char *id)
{
    uint32_t r[4];
    char *p = id;
    int k;

    for (k = 0; k != 4; ++k)
        r[k] = aor_worker_random(w);
    p = put_hex(p, r[0], 8);
    *p++ = '-';
    p = put_hex(p, r[1] >> 16, 4);
    *p++ = '-';
    *p++ = '4';
    p = put_hex(p, r[1] & 0xfff, 3);
    *p++ = '-';
    p = put_hex(p, (r[2] >> 16 & 0x3fff) | 0x8000, 4);
    *p++ = '-';
    p = put_hex(p, r[2] & 0xffff, 4);
    p = put_hex(p, r[3], 8);
    *p = '\0';
}

/* echoes the client's x-request-id when it is sane, else makes a UUID-shaped one; `fresh`
 * ignores the client's (a request refused for its headers is not read further) */
static void assign_request_id(struct aor_worker *w, h2o_req_t *req, char *id, int fresh)
{
    ssize_t i = fresh ? -1 : h2o_find_header_by_str(&req->headers, H2O_STRLIT("x-request-id"), -1);

    if (i >= 0 && valid_request_id(req->headers.entries[i].value.base, req->headers.entries[i].value.len)) {
        memcpy(id, req->headers.entries[i].value.base, req->headers.entries[i].value.len);
        id[req->headers.entries[i].value.len] = '\0';
    } else {
        new_request_id(w, id);
    }
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-request-id"), 0, NULL,
                          h2o_strdup(&req->pool, id, strlen(id)).base, strlen(id));
}

/* ---- control endpoints ------------------------------------------------------------- */

static void send_text(h2o_req_t *req, int status, const char *reason, const char *type, const char *body)
{
    req->res.status = status;
    req->res.reason = reason;
    req->res.content_length = strlen(body);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, type, strlen(type));
    h2o_send_inline(req, body, strlen(body));
}

/*
 * Ready = able to serve (SPEC §4): not draining, one backend whose circuit is not open, in modes
 * jwt and jwt_and_key every issuer's keys loaded once, and Redis up when on_failure: closed would
 * refuse every keyed request without it. State reads only (a mutex per issuer), no I/O per probe.
 */
static void serve_readyz(struct aor_worker *w, h2o_req_t *req)
{
    const struct aor_config *conf = w->conf;
    int64_t now = aor_now_ms();
    const char *why = NULL;
    size_t i;

    if (w->shutting_down)
        why = "shutting down";
    for (i = 0; why == NULL && i != conf->num_backends; ++i)
        if (!aor_balancer_circuit_open(conf->backends[i].state, now) && aor_cred_usable(&conf->backends[i]))
            break;
    if (why == NULL && i == conf->num_backends)
        why = "no backend can be used (every circuit is open or has no valid credential token)";
    if (why == NULL && (conf->auth.mode == AOR_AUTH_JWT || conf->auth.mode == AOR_AUTH_JWT_AND_KEY))
        for (i = 0; why == NULL && i != conf->auth.num_jwt; ++i)
            if (conf->keystores == NULL || conf->keystores[i] == NULL || !aor_keystore_ready(conf->keystores[i]))
                why = "an issuer's signing keys are not loaded yet";
    if (why == NULL && conf->redis.url != NULL && conf->redis.fail_closed && (w->redis == NULL || !aor_redis_is_up(w->redis)))
        why = "redis is unreachable and on_failure is closed";
    if (why == NULL) {
        send_text(req, 200, "OK", "application/json", "{\"status\":\"ready\"}\n");
        return;
    }
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL, H2O_STRLIT("1"));
    aor_error_send(req, AOR_ERR_NOT_READY, why);
}

/* ---- data plane ------------------------------------------------------------------ */

/* h2o disposes the request's pool: from now on `req` is gone */
struct anchor {
    struct aor_request *ar;
};

static void on_anchor_dispose(void *p)
{
    struct aor_request *ar = ((struct anchor *)p)->ar;

    /* a request abandoned before its answer was sent (RST_STREAM from the client, or one
     * h2o reset itself, a disconnect) counts against the connection's reset budget */
    aor_server_conn_account(aor_server_conn_of(ar->req->conn), !ar->final_sent || (ar->started && !ar->upstream_done),
                            ar->req->version >= 0x200);
    if (!ar->final_sent) {
        /* the client left before the answer started (499, as nginx logs it) */
        ar->final_status = 499;
        ar->final_sent = 1;
        aor_pipeline_finish(ar);
    }
    ar->req = NULL;
    aor_auth_cancel(ar);
    aor_proxy_on_dispose(ar);
    aor_pipeline_maybe_free(ar);
}

void aor_pipeline_maybe_free(struct aor_request *ar)
{
    struct aor_worker *w = ar->worker;

    if (ar->req != NULL || ar->xfer.active || ar->in_upstream_cb || ar->auth.pending != NULL || ar->deferred ||
        ar->adm.call != NULL)
        return;
    if (ar->body_budget != 0)
        __atomic_fetch_sub(&aor_inflight_body_bytes, ar->body_budget, __ATOMIC_RELAXED);
    aor_proxy_free(ar);
    free(ar->body_copy);
    aor_config_release(ar->conf);
    free(ar);
    aor_metrics_inflight_add(-1);
    aor_worker_request_done(w);
}

static int is_json_body(h2o_req_t *req)
{
    ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_CONTENT_TYPE, -1);
    size_t k;

    if (i >= 0) {
        h2o_iovec_t v = req->headers.entries[i].value;
        return v.len >= 16 && strncasecmp(v.base, "application/json", 16) == 0;
    }
    /* no content type: JSON if it looks like an object */
    for (k = 0; k != req->entity.len; ++k) {
        char c = req->entity.base[k];
        if (c != ' ' && c != '\t' && c != '\r' && c != '\n')
            return c == '{';
    }
    return 0;
}

/* stage: the body's size, before anything else looks at it. 0 or an error to send */
static int check_body_size(struct aor_request *ar, h2o_req_t *req, enum aor_error *err, const char **msg)
{
    if (req->entity.len > ar->conf->limits.max_body_bytes) {
        *err = AOR_ERR_BODY_TOO_LARGE;
        *msg = "request body exceeds max_body_bytes";
        return -1;
    }
    return 0;
}

/* stage (after authentication): read the body once — copy, parse, find the deployment. 0 or an error to send */
static int read_body(struct aor_request *ar, h2o_req_t *req, enum aor_error *err, const char **msg)
{
    if (req->entity.len == 0 && !ar->route.passthrough) { /* every inference operation takes a body */
        *err = AOR_ERR_INVALID_REQUEST;
        *msg = "the request body is empty";
        return -1;
    }
    if (req->entity.len != 0) {
        if ((ar->body_copy = malloc(req->entity.len)) == NULL) {
            *err = AOR_ERR_BACKEND_ERROR;
            *msg = "out of memory";
            return -1;
        }
        memcpy(ar->body_copy, req->entity.base, req->entity.len);
        ar->body = ar->body_copy;
        ar->body_len = req->entity.len;
    }
    if (ar->body_len != 0 && is_json_body(req)) {
        if (aor_reqbody_scan(ar->body, ar->body_len, &ar->rb) != 0) {
            *err = AOR_ERR_INVALID_REQUEST;
            *msg = "request body is not a well-formed JSON object (or names model, stream or stream_options twice, escapes a "
                   "member name, or has a stream_options that is not null or an object with one plain include_usage of true, "
                   "false or null)";
            return -1;
        }
        ar->body_is_json = 1;
        ar->stream = ar->rb.stream;
    }
    if (ar->route.kind == AOR_ROUTE_RAW || (ar->route.kind == AOR_ROUTE_V1 && ar->route.passthrough && ar->rb.model == NULL)) {
        ar->deployment[0] = '\0'; /* a passthrough without a deployment: any backend may take it */
    } else if (ar->route.kind == AOR_ROUTE_V1) {
        if (ar->rb.model == NULL || !aor_route_valid_name(ar->rb.model, ar->rb.model_len)) {
            *err = AOR_ERR_INVALID_REQUEST;
            *msg = "the body must name a valid model";
            return -1;
        }
        memcpy(ar->deployment, ar->rb.model, ar->rb.model_len);
        ar->deployment[ar->rb.model_len] = '\0';
    } else {
        memcpy(ar->deployment, ar->route.deployment, ar->route.deployment_len);
        ar->deployment[ar->route.deployment_len] = '\0';
    }
    ar->estimate = aor_reqbody_estimate(&ar->rb, ar->body_len);
    /* the tenant is known (authenticated before the body is read): its default completion limit */
    ar->estimate_default =
        aor_reqbody_default_completion(&ar->rb, ar->route.op, ar->route.op_len, aor_quota_default_max_tokens(ar->conf, ar->tenant));
    return 0;
}

/* stage: the backends that serve the deployment, for the balancer to choose from */
static int collect_candidates(struct aor_request *ar, enum aor_error *err, const char **msg)
{
    const struct aor_config *conf = ar->conf;
    int64_t now = aor_now_ms();
    size_t i;

    for (i = 0; i != conf->num_backends && ar->num_cand != AOR_MAX_CANDIDATES; ++i) {
        const struct aor_backend_conf *b = conf->backends + i;
        struct aor_deployment_state *dep;
        /* the deployment's state on that backend is held until the request is freed (aor_proxy_free) */
        const char *name = aor_backend_route(b, ar->deployment, strlen(ar->deployment), now, &dep);
        if (name == NULL || (ar->route.kind == AOR_ROUTE_RAW && b->provider != AOR_PROVIDER_AZURE))
            continue;
        if (name == aor_config_deployment_unchanged)
            name = ar->deployment;
        ar->cand[ar->num_cand].state = b->state;
        ar->cand[ar->num_cand].dep = dep;
        ar->cand[ar->num_cand].priority = b->priority;
        ar->cand[ar->num_cand].weight = b->weight;
        ar->cand[ar->num_cand].tpm = b->tpm;
        ar->cand_backend[ar->num_cand] = b;
        ar->cand_name[ar->num_cand] = name;
        ++ar->num_cand;
    }
    if (ar->num_cand == 0) {
        *err = AOR_ERR_DEPLOYMENT_NOT_FOUND;
        *msg = "no backend serves this deployment";
        return -1;
    }
    return 0;
}

/* a stage refused the request: answer with the SPEC §4 error */
static void refuse(struct aor_request *ar, enum aor_error err, const char *msg)
{
    if (ar->last_error == NULL) /* the access log's error: the SPEC §4 code (an auth refusal set its reason) */
        ar->last_error = aor_error_code(err);
    ar->final_status = aor_error_status(err);
    ar->final_sent = 1;
    aor_pipeline_finish(ar);
    aor_error_send(ar->req, err, msg);
}

/* the stages after admission: candidates, proxy */
static void after_admit(struct aor_request *ar)
{
    enum aor_error err = AOR_ERR_BACKEND_ERROR;
    const char *msg = "out of memory";

    if (ar->req == NULL) { /* the client left while Redis was asked (the reservation is given back) */
        aor_pipeline_maybe_free(ar);
        return;
    }
    if (ar->adm.refused) {
        if (ar->adm.retry_after_s > 0) {
            char *v = h2o_mem_alloc_pool(&ar->req->pool, 24);
            int n = snprintf(v, 24, "%lld", (long long)ar->adm.retry_after_s);
            h2o_add_header(&ar->req->pool, &ar->req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL, v, n);
        }
        refuse(ar, (enum aor_error)ar->adm.error, ar->adm.message);
        return;
    }
    if (ar->worker->tearing_down) {
        /* admitted (after a reserve that timed out, say) while the worker closes its connections:
         * not forwarded; the client is being cut off */
        refuse(ar, AOR_ERR_SHUTTING_DOWN, "the router is stopping");
        return;
    }
    if (collect_candidates(ar, &err, &msg) != 0) {
        refuse(ar, err, msg);
        return;
    }
    aor_proxy_start(ar);
}

/* 1 when the tenant's config (its own section, else "default") allows `name`; Redis overrides are admission's */
static int tenant_allows(const struct aor_config *conf, const char *tenant, const char *name)
{
    const struct aor_tenant_conf *t = NULL;

    for (size_t i = 0; i != conf->num_tenants; ++i)
        if (strcmp(conf->tenants[i].name, tenant) == 0 || (t == NULL && strcmp(conf->tenants[i].name, "default") == 0))
            t = &conf->tenants[i];
    if (t == NULL || t->deployments == NULL)
        return 1;
    for (size_t i = 0; i != t->num_deployments; ++i)
        if (strcmp(t->deployments[i], name) == 0)
            return 1;
    return 0;
}

/*
 * GET /openai/v1/models and /v1/models (issue 11): the logical deployments the backends' deployments
 * maps name (a backend without a map serves any name, so names none), those the tenant's config
 * allows, once each, in config order, in the OpenAI list shape; /models/{name}: that one, or 404.
 * Nothing goes upstream, no quota is spent; the line is logged, no request metric is counted.
 */
static void serve_models(struct aor_request *ar)
{
    const struct aor_config *conf = ar->conf;
    h2o_req_t *req = ar->req;
    const char *one = ar->route.op_len > 7 ? ar->route.op + 7 : NULL; /* "models/{name}" */
    size_t one_len = one != NULL ? ar->route.op_len - 7 : 0, cap = 64, len = 0, found = 0;
    long long created = (long long)(ar->started_ms / 1000);
    char *body = NULL, *p;

    for (int pass = 0; pass < 2; ++pass) { /* pass 0 measures, pass 1 writes */
        len = 0;
        found = 0;
        if (one == NULL)
            len += (size_t)snprintf(pass ? body : NULL, pass ? cap : 0, "{\"object\":\"list\",\"data\":[");
        for (size_t b = 0; b != conf->num_backends; ++b) {
            const struct aor_backend_conf *be = conf->backends + b;
            for (size_t d = 0; d != be->num_deployments; ++d) {
                const char *name = be->deployments[d].logical;
                int dup = 0;
                /* once each: an earlier backend (or an earlier entry of this one) named it already */
                for (size_t b2 = 0; b2 <= b && !dup; ++b2)
                    for (size_t d2 = 0; d2 != (b2 == b ? d : conf->backends[b2].num_deployments) && !dup; ++d2)
                        dup = strcmp(conf->backends[b2].deployments[d2].logical, name) == 0;
                if (dup || !tenant_allows(conf, ar->tenant, name))
                    continue;
                if (one != NULL && (strlen(name) != one_len || memcmp(name, one, one_len) != 0))
                    continue;
                /* names are [A-Za-z0-9._-] (config.c): nothing to escape */
                p = pass ? body + len : NULL;
                len += (size_t)snprintf(p, pass ? cap - len : 0,
                                        "%s{\"id\":\"%s\",\"object\":\"model\",\"created\":%lld,\"owned_by\":\"%s\"}",
                                        found != 0 && one == NULL ? "," : "", name, created, "aoai-router");
                ++found;
            }
        }
        if (one == NULL)
            len += (size_t)snprintf(pass ? body + len : NULL, pass ? cap - len : 0, "]}");
        if (pass == 0) {
            cap = len + 1;
            body = h2o_mem_alloc_pool(&req->pool, cap);
        }
    }
    if (one != NULL && found == 0) {
        refuse(ar, AOR_ERR_DEPLOYMENT_NOT_FOUND, "no such model (deployment)");
        return;
    }
    ar->last_error = NULL;
    ar->final_status = 200;
    ar->final_sent = 1;
    aor_accesslog_write(ar->worker->accesslog, ar);
    req->res.status = 200;
    req->res.reason = "OK";
    req->res.content_length = len;
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("application/json"));
    h2o_send_inline(req, body, len);
}

/* the stages after authentication: admit, candidates, proxy */
static void after_authenticate(struct aor_request *ar)
{
    enum aor_error err = AOR_ERR_BACKEND_ERROR;
    const char *msg = "out of memory";

    if (ar->req == NULL) { /* the client left while its key was being looked up */
        aor_pipeline_maybe_free(ar);
        return;
    }
    if (ar->auth.status != 0) {
        aor_metrics_auth_failure(ar->auth.reason);
        ar->last_error = ar->auth.reason;
        aor_auth_add_challenge(&ar->auth, ar->req);
        refuse(ar,
               /* 503 only for the key store; anything else undecided (a verifier's internal
                * error) is no proof of identity: 401 */
               ar->auth.status == 403                                                       ? AOR_ERR_FORBIDDEN
               : ar->auth.status == 503 && strcmp(ar->auth.reason, "keys_unavailable") == 0 ? AOR_ERR_NOT_READY
               : ar->auth.status == 503                                                     ? AOR_ERR_QUOTA_STORE_UNAVAILABLE
                                                                                            : AOR_ERR_UNAUTHORIZED,
               ar->auth.description);
        return;
    }
    ar->tenant = ar->auth.tenant;
    if (ar->route.models) {
        serve_models(ar);
        return;
    }
    if (read_body(ar, ar->req, &err, &msg) != 0) {
        refuse(ar, err, msg);
        return;
    }
    /* stage: may the tenant spend this now (admit.c; may wait for one Redis round trip) */
    if (aor_admit_start(ar, after_admit))
        after_admit(ar);
}

static void on_defer_check(uv_check_t *h);
static void on_defer_idle(uv_idle_t *h);

static void data_plane(struct aor_worker *w, h2o_req_t *req, const struct aor_route *route, const char *id)
{
    struct aor_request *ar;
    struct anchor *anchor;
    enum aor_error err = AOR_ERR_BACKEND_ERROR;
    const char *msg = "out of memory";

    if ((ar = calloc(1, sizeof(*ar))) == NULL) {
        aor_error_send(req, err, msg);
        return;
    }
    ar->req = req;
    ar->worker = w;
    ar->conf = w->conf;
    aor_config_retain(ar->conf);
    ar->route = *route;
    ar->genai_op = aor_metrics_genai_operation(route->op, route->op_len);
    ar->started_ms = aor_now_ms();
    ar->started_ns = aor_mono_ns();
    ar->backend_remaining_tokens = -1;
    ar->backend_remaining_requests = -1;
    ar->backend_reset_tokens_ms = -1;
    ar->backend_reset_requests_ms = -1;
    ar->current = -1; /* no attempt yet: stages that refuse log no backend */
    ar->auth.method = "none";
    strcpy(ar->id, id);
    aor_accesslog_capture(&ar->client, req);
    for (size_t k = 0; k != req->method.len && k + 1 < sizeof(ar->method); ++k) /* a token; keep the log line JSON-safe */
        ar->method[k] = (req->method.base[k] >= 'A' && req->method.base[k] <= 'Z') ? req->method.base[k] : '?';
    ++w->inflight;
    aor_metrics_inflight_add(1);
    anchor = h2o_mem_alloc_shared(&req->pool, sizeof(*anchor), on_anchor_dispose);
    anchor->ar = ar;

    if (check_body_size(ar, req, &err, &msg) != 0) {
        refuse(ar, err, msg);
        return;
    }
    /* the body counts against the process-wide budget from here until the request ends */
    if (req->entity.len != 0) {
        uint64_t held = __atomic_add_fetch(&aor_inflight_body_bytes, req->entity.len, __ATOMIC_RELAXED);
        ar->body_budget = req->entity.len;
        if (held > ar->conf->limits.max_inflight_body_bytes) {
            aor_metrics_overloaded();
            h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL, H2O_STRLIT("1"));
            refuse(ar, AOR_ERR_OVERLOADED, "too many request bodies in flight; retry later");
            return;
        }
    }
    /* Rapid Reset: nothing starts in the read that brought the request; a RST_STREAM later in
     * that read disposes the request first, and the deferred start finds it gone */
    ar->deferred = 1;
    h2o_linklist_insert(&w->deferred, &ar->deferred_link);
    if (!uv_is_active((uv_handle_t *)&w->defer_check)) {
        /* the check phase follows the poll phase (every read of this iteration is processed by
         * then); the idle handle keeps the next poll from blocking when queued outside it */
        uv_check_start(&w->defer_check, on_defer_check);
        uv_idle_start(&w->defer_idle, on_defer_idle);
    }
}

static void on_defer_idle(uv_idle_t *h)
{
    (void)h;
}

/* the requests queued by data_plane: authenticate and go on, unless they are gone */
static void on_defer_check(uv_check_t *h)
{
    struct aor_worker *w = H2O_STRUCT_FROM_MEMBER(struct aor_worker, defer_check, h);
    h2o_linklist_t batch;

    uv_check_stop(&w->defer_check);
    uv_idle_stop(&w->defer_idle);
    h2o_linklist_init_anchor(&batch);
    h2o_linklist_insert_list(&batch, &w->deferred);
    while (!h2o_linklist_is_empty(&batch)) {
        struct aor_request *ar = H2O_STRUCT_FROM_MEMBER(struct aor_request, deferred_link, batch.next);
        struct aor_client_conn *c;
        h2o_linklist_unlink(&ar->deferred_link);
        ar->deferred = 0;
        if (ar->req == NULL) {
            aor_pipeline_maybe_free(ar);
            continue;
        }
        if (w->tearing_down || ((c = aor_server_conn_of(ar->req->conn)) != NULL && c->closing)) {
            refuse(ar, AOR_ERR_SHUTTING_DOWN, "connection closing");
            continue;
        }
        /* authenticate before the body is copied or scanned */
        if (aor_auth_authenticate(ar, ar->req, after_authenticate))
            after_authenticate(ar);
    }
}

static void serve_metrics(struct aor_worker *w, h2o_req_t *req);
static void serve_status(struct aor_worker *w, h2o_req_t *req, int html);

/* 1 when the decoded header block is within limits.max_header_count and max_header_bytes */
static int headers_within_limits(const struct aor_config *conf, h2o_req_t *req)
{
    uint64_t bytes = (uint64_t)req->method.len + req->path.len + req->authority.len;
    size_t i;

    if (req->headers.size > conf->limits.max_header_count)
        return 0;
    for (i = 0; i != req->headers.size; ++i) {
        bytes += req->headers.entries[i].name->len + req->headers.entries[i].value.len;
        if (bytes > conf->limits.max_header_bytes)
            return 0;
    }
    return bytes <= conf->limits.max_header_bytes;
}

/* picohttpparser as built into libh2o 2.2.5 */
struct phr_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};
int phr_parse_request(const char *buf, size_t len, const char **method, size_t *method_len, const char **path, size_t *path_len,
                      int *minor_version, struct phr_header *headers, size_t *num_headers, size_t last_len);

/* 1 when an HTTP/1.x request's body length has two readings (RFC 9112 §6.3): two content-lengths
 * (h2o takes the first), or content-length with transfer-encoding (h2o takes the latter). A proxy
 * in front that takes the other one would pass the rest of a body to us as the next request. h2o
 * keeps neither header in req->headers: the head is read again from the connection's input, where
 * h2o 2.2.5 leaves it until the request is done (skipped when it is not this request's head) */
static int ambiguous_framing(struct aor_client_conn *c, h2o_req_t *req)
{
    struct phr_header h[AOR_H1_MAX_HEADERS];
    size_t num = AOR_H1_MAX_HEADERS, method_len, path_len, i, cl = 0, te = 0;
    const char *method, *path;
    int minor;

    if (req->version >= 0x200 || c == NULL || c->sock == NULL || c->sock->input == NULL ||
        phr_parse_request(c->sock->input->bytes, c->sock->input->size, &method, &method_len, &path, &path_len, &minor, h, &num,
                          0) <= 0 ||
        !h2o_memis(method, method_len, req->method.base, req->method.len) ||
        !h2o_memis(path, path_len, req->path.base, req->path.len))
        return 0;
    for (i = 0; i != num; ++i) {
        if (h[i].name == NULL) /* a continuation line */
            continue;
        cl += h2o_lcstris(h[i].name, h[i].name_len, H2O_STRLIT("content-length"));
        te += h2o_lcstris(h[i].name, h[i].name_len, H2O_STRLIT("transfer-encoding"));
    }
    return cl + te > 1;
}

int aor_pipeline_on_req(h2o_handler_t *self, h2o_req_t *req)
{
    struct aor_worker *w = worker_of(req);
    struct aor_route route;
    char id[AOR_REQUEST_ID_MAX + 1];
    const char *error = NULL; /* the access log's error for a request answered here */

    uint64_t started_ns = aor_mono_ns();
    struct aor_client_conn *c = aor_server_conn_of(req->conn);

    aor_server_conn_guard(c); /* an h2c upgrade starts its reads outside the guard */

    /* before anything reads the headers: their count and decoded size (an HPACK-indexed
     * header costs the client one byte per copy) */
    if (!headers_within_limits(w->conf, req)) {
        assign_request_id(w, req, id, 1);
        aor_error_send(req, AOR_ERR_HEADERS_TOO_LARGE, "request headers exceed max_header_bytes or max_header_count");
        aor_accesslog_write_req(w->accesslog, req, id, aor_error_code(AOR_ERR_HEADERS_TOO_LARGE), started_ns);
        return 0;
    }
    if (ambiguous_framing(c, req)) {
        req->http1_is_persistent = 0; /* what follows on the connection has no trustworthy boundary */
        assign_request_id(w, req, id, 1);
        aor_error_send(req, AOR_ERR_INVALID_REQUEST,
                       "the request has two content-lengths, or content-length and transfer-encoding");
        aor_accesslog_write_req(w->accesslog, req, id, aor_error_code(AOR_ERR_INVALID_REQUEST), started_ns);
        return 0;
    }
    if (w->tearing_down || (c != NULL && c->closing)) {
        aor_error_send(req, AOR_ERR_SHUTTING_DOWN, "the connection is closing");
        return 0;
    }
    assign_request_id(w, req, id, 0);
    aor_route_parse(req->path.base, req->path.len, &route);
    switch (route.kind) {
    case AOR_ROUTE_HEALTHZ:
        send_text(req, 200, "OK", "text/plain", "ok\n");
        break;
    case AOR_ROUTE_READYZ:
        serve_readyz(w, req);
        break;
    case AOR_ROUTE_METRICS:
        serve_metrics(w, req);
        break;
    case AOR_ROUTE_STATUS:
    case AOR_ROUTE_STATUS_JSON:
        serve_status(w, req, route.kind == AOR_ROUTE_STATUS);
        break;
    case AOR_ROUTE_BAD:
        aor_error_send(req, AOR_ERR_INVALID_REQUEST, "malformed data-plane path");
        error = aor_error_code(AOR_ERR_INVALID_REQUEST);
        break;
    case AOR_ROUTE_NOT_FOUND:
    case AOR_ROUTE_DEPLOYMENT:
    case AOR_ROUTE_V1:
    case AOR_ROUTE_RAW:
        /* only inference operations (and what the operator listed) travel with the router's credential */
        switch (aor_route_authorize(&route, req->method.base, req->method.len, w->conf)) {
        case AOR_ACCESS_INFERENCE:
        case AOR_ACCESS_PASSTHROUGH:
        case AOR_ACCESS_MODELS:             /* authenticated like the data plane, then answered by serve_models */
            data_plane(w, req, &route, id); /* logs when its final status is known */
            return 0;
        case AOR_ACCESS_METHOD_NOT_ALLOWED:
            h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL, H2O_STRLIT("POST"));
            aor_error_send(req, AOR_ERR_METHOD_NOT_ALLOWED, "this operation takes POST only");
            error = aor_error_code(AOR_ERR_METHOD_NOT_ALLOWED);
            break;
        case AOR_ACCESS_NOT_FOUND:
            aor_error_send(req, AOR_ERR_NOT_FOUND,
                           route.kind == AOR_ROUTE_NOT_FOUND ? "unknown path"
                                                             : "this operation is not forwarded by the router (see passthrough)");
            error = aor_error_code(AOR_ERR_NOT_FOUND);
            break;
        }
        break;
    }
    /* one access-log line for every request, control endpoints included */
    if (error == NULL && req->res.status >= 400) /* /readyz 503, /metrics on the wrong listener */
        error = req->res.status == 404 ? aor_error_code(AOR_ERR_NOT_FOUND) : aor_error_code(AOR_ERR_NOT_READY);
    aor_accesslog_write_req(w->accesslog, req, id, error, started_ns);
    return 0;
}

/* ---- account and log ------------------------------------------------------------- */

/* a non-negative number as decimal text in the request's pool (no printf on the hot path) */
static h2o_iovec_t pool_dec(h2o_mem_pool_t *pool, int64_t v)
{
    char tmp[24], *p = tmp + sizeof(tmp);
    uint64_t u = v < 0 ? 0 : (uint64_t)v;

    do
        *--p = (char)('0' + u % 10);
    while ((u /= 10) != 0);
    return h2o_strdup(pool, p, (size_t)(tmp + sizeof(tmp) - p));
}

void aor_pipeline_add_client_headers(struct aor_request *ar)
{
    h2o_req_t *req = ar->req;
    h2o_iovec_t v;

    /* the tenant's own minute window (SPEC §4); an unlimited one has no header */
    if (ar->adm.remaining_tokens >= 0) {
        v = pool_dec(&req->pool, ar->adm.remaining_tokens);
        h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-ratelimit-remaining-tokens"), 0, NULL, v.base, v.len);
    }
    if (ar->adm.remaining_requests >= 0) {
        v = pool_dec(&req->pool, ar->adm.remaining_requests);
        h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-ratelimit-remaining-requests"), 0, NULL, v.base, v.len);
    }
}

void aor_pipeline_finish(struct aor_request *ar)
{
    const char *backend = ar->current >= 0 ? ar->cand_backend[ar->current]->name : "";
    uint64_t now = aor_mono_ns();
    const char *deployment = NULL;
    size_t i;

    /* label values from the configuration or bounded sets only: a refused request's tenant is
     * "", a deployment no backend was found for is "" (SPEC §7, issue 6 item 4). A candidate
     * with a deployments map proves the name is configured (the common case: no lookup) */
    for (i = 0; i != ar->num_cand && deployment == NULL; ++i)
        if (ar->cand_backend[i]->deployments != NULL)
            deployment = ar->deployment;
    if (deployment == NULL)
        deployment = aor_metrics_deployment_label(ar->conf, ar->deployment, ar->tenant != NULL && ar->num_cand != 0);

    /* account: the reservation becomes the usage the backend reported (or is given back) */
    aor_admit_settle(ar);
    aor_metrics_request(ar->tenant, deployment, backend, ar->final_status);
    aor_metrics_request_duration(deployment, backend, (double)(now - ar->started_ns) / 1e9);
    if (ar->usage.found) {
        aor_metrics_tokens(ar->tenant, deployment, backend, ar->usage.prompt, ar->usage.completion);
        aor_metrics_genai_tokens(ar->genai_op, deployment, ar->usage.prompt, ar->usage.completion);
    }
    if (ar->ttft_ns != 0 && ar->final_status >= 200 && ar->final_status < 300)
        aor_metrics_genai_ttft(ar->genai_op, deployment, (double)ar->ttft_ns / 1e9);
    aor_accesslog_write(ar->worker->accesslog, ar);
}

/* 1 when `req` came in on the `metrics:` listener (0 when there is none): the socket it was
 * accepted on, not its port (a data-plane listener may share the port at another address) */
static int on_metrics_listener(h2o_req_t *req)
{
    const struct aor_client_conn *c = aor_server_conn_of(req->conn);

    return c != NULL && c->metrics;
}

static void send_owned(h2o_req_t *req, char *body, size_t len, const char *content_type)
{
    req->res.status = 200;
    req->res.reason = "OK";
    req->res.content_length = len;
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, content_type, strlen(content_type));
    h2o_send_inline(req, body, len); /* copies into the request's pool */
    free(body);
}

/* /metrics: on its own listener when one was opened at start (`metrics:`), else on every listener */
static void serve_metrics(struct aor_worker *w, h2o_req_t *req)
{
    const struct aor_config *conf = w->conf;
    size_t len;
    char *text;

    if (aor_server_metrics_port() != 0 && !on_metrics_listener(req)) {
        aor_error_send(req, AOR_ERR_NOT_FOUND, "metrics are served on their own listener");
        return;
    }
    if ((text = aor_metrics_render(conf, aor_now_ms(), &len)) == NULL) {
        aor_error_send(req, AOR_ERR_BACKEND_ERROR, "out of memory");
        return;
    }
    send_owned(req, text, len, "text/plain; version=0.0.4");
}

/* /status and /status.json: on the `metrics:` listener only (they name backends and tenants);
 * without one, 404 everywhere */
static void serve_status(struct aor_worker *w, h2o_req_t *req, int html)
{
    const struct aor_config *conf = w->conf;
    size_t len;
    char *text;

    if (!on_metrics_listener(req)) {
        aor_error_send(req, AOR_ERR_NOT_FOUND, "unknown path");
        return;
    }
    if ((text = aor_status_render(conf, aor_now_ms(), html, &len)) == NULL) {
        aor_error_send(req, AOR_ERR_BACKEND_ERROR, "out of memory");
        return;
    }
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-store"));
    if (html) {
        /* no script, no outside resources, no framing by another page */
        h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("content-security-policy"), 0, NULL,
                              H2O_STRLIT("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"));
        h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-content-type-options"), 0, NULL, H2O_STRLIT("nosniff"));
    }
    send_owned(req, text, len, html ? "text/html; charset=utf-8" : "application/json");
}
