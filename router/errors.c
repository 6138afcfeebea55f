/* errors.c — see errors.h */
#include <stdio.h>
#include <string.h>
#include "errors.h"

static const struct {
    int status;
    const char *code, *reason;
} table[] = {
    [AOR_ERR_INVALID_REQUEST] = {400, "invalid_request", "Bad Request"},
    [AOR_ERR_UNAUTHORIZED] = {401, "unauthorized", "Unauthorized"},
    [AOR_ERR_FORBIDDEN] = {403, "forbidden", "Forbidden"},
    [AOR_ERR_NOT_FOUND] = {404, "not_found", "Not Found"},
    [AOR_ERR_DEPLOYMENT_NOT_FOUND] = {404, "deployment_not_found", "Not Found"},
    [AOR_ERR_METHOD_NOT_ALLOWED] = {405, "method_not_allowed", "Method Not Allowed"},
    [AOR_ERR_BODY_TOO_LARGE] = {413, "body_too_large", "Payload Too Large"},
    [AOR_ERR_HEADERS_TOO_LARGE] = {431, "headers_too_large", "Request Header Fields Too Large"},
    [AOR_ERR_TENANT_QUOTA_EXCEEDED] = {429, "tenant_quota_exceeded", "Too Many Requests"},
    [AOR_ERR_BACKENDS_THROTTLED] = {429, "backends_throttled", "Too Many Requests"},
    [AOR_ERR_BACKEND_ERROR] = {502, "backend_error", "Bad Gateway"},
    [AOR_ERR_QUOTA_STORE_UNAVAILABLE] = {503, "quota_store_unavailable", "Service Unavailable"},
    [AOR_ERR_NOT_READY] = {503, "not_ready", "Service Unavailable"},
    [AOR_ERR_SHUTTING_DOWN] = {503, "shutting_down", "Service Unavailable"},
    [AOR_ERR_OVERLOADED] = {503, "overloaded", "Service Unavailable"},
};

int aor_error_status(enum aor_error err)
{
    return table[err].status;
}

const char *aor_error_code(enum aor_error err)
{
    return table[err].code;
}

/* JSON string escaping into `out` (capacity `cap`), truncating safely; returns length */
static size_t json_escape(const char *s, char *out, size_t cap)
{
    size_t n = 0;

    for (; *s != '\0' && n + 7 < cap; ++s) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[n++] = '\\';
            out[n++] = c;
        } else if (c < 0x20) {
            n += snprintf(out + n, cap - n, "\\u%04x", c);
        } else {
            out[n++] = c;
        }
    }
    out[n] = '\0';
    return n;
}

void aor_error_send(h2o_req_t *req, enum aor_error err, const char *message)
{
    char escaped[512];
    size_t cap;
    char *body;
    int len;

    json_escape(message, escaped, sizeof(escaped));
    cap = strlen(escaped) + 64 + strlen(table[err].code);
    body = h2o_mem_alloc_pool(&req->pool, cap);
    len = snprintf(body, cap, "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}\n", table[err].code, escaped);
    req->res.status = table[err].status;
    req->res.reason = table[err].reason;
    /* with a length, HTTP/1.1 keeps the connection (h2o closes non-200 replies without one) */
    req->res.content_length = (size_t)len;
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("application/json"));
    h2o_send_inline(req, body, (size_t)len);
}
