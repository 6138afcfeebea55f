/*
 * errors — the SPEC §4 error table: status, code and the Azure OpenAI JSON shape
 * {"error":{"code":"…","message":"…"}}. Messages are fixed strings or names the
 * client sent; never a credential.
 */
#ifndef AOR_ERRORS_H
#define AOR_ERRORS_H

#include <h2o.h>

enum aor_error {
    AOR_ERR_INVALID_REQUEST,         /* 400 */
    AOR_ERR_UNAUTHORIZED,            /* 401 */
    AOR_ERR_FORBIDDEN,               /* 403 */
    AOR_ERR_NOT_FOUND,               /* 404 unknown path */
    AOR_ERR_DEPLOYMENT_NOT_FOUND,    /* 404 */
    AOR_ERR_METHOD_NOT_ALLOWED,      /* 405 */
    AOR_ERR_BODY_TOO_LARGE,          /* 413 */
    AOR_ERR_HEADERS_TOO_LARGE,       /* 431 */
    AOR_ERR_TENANT_QUOTA_EXCEEDED,   /* 429 */
    AOR_ERR_BACKENDS_THROTTLED,      /* 429 */
    AOR_ERR_BACKEND_ERROR,           /* 502 */
    AOR_ERR_QUOTA_STORE_UNAVAILABLE, /* 503 */
    AOR_ERR_NOT_READY,               /* 503 */
    AOR_ERR_SHUTTING_DOWN,           /* 503 */
    AOR_ERR_OVERLOADED,              /* 503 the body budget is spent */
};

int aor_error_status(enum aor_error err);
const char *aor_error_code(enum aor_error err);

/**
 * Sends the error as the whole response to `req`; headers already in req->res.headers
 * (x-request-id, retry-after, ...) are kept. `message` is JSON-escaped here.
 */
void aor_error_send(h2o_req_t *req, enum aor_error err, const char *message);

#endif
