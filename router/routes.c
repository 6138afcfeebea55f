/* routes.c — see routes.h */
#include <string.h>
#include "routes.h"

#define PREFIX_DEPLOYMENTS "/openai/deployments/"
#define PREFIX_OPENAI_V1 "/openai/v1/"
#define PREFIX_V1 "/v1/"

static int has_prefix(const char *s, size_t len, const char *prefix)
{
    size_t plen = strlen(prefix);
    return len >= plen && memcmp(s, prefix, plen) == 0;
}

static int path_is(const char *s, size_t len, const char *what)
{
    return len == strlen(what) && memcmp(s, what, len) == 0;
}

static int name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

int aor_route_valid_name(const char *name, size_t len)
{
    size_t i;

    if (len == 0 || len > 64)
        return 0;
    if ((len == 1 && name[0] == '.') || (len == 2 && name[0] == '.' && name[1] == '.'))
        return 0;
    for (i = 0; i != len; ++i)
        if (!name_char(name[i]))
            return 0;
    return 1;
}

/* an operation is one or more valid names joined by single '/' */
static int valid_op(const char *op, size_t len)
{
    size_t start = 0, i;

    if (len == 0 || len > 256)
        return 0;
    for (i = 0; i <= len; ++i) {
        if (i == len || op[i] == '/') {
            if (!aor_route_valid_name(op + start, i - start))
                return 0;
            start = i + 1;
        }
    }
    return 1;
}

void aor_route_parse(const char *path, size_t len, struct aor_route *out)
{
    const char *q = memchr(path, '?', len);
    size_t plen = q != NULL ? (size_t)(q - path) : len;

    memset(out, 0, sizeof(*out));
    out->path = path;
    out->path_len = plen;
    if (q != NULL) {
        out->query = q + 1;
        out->query_len = len - plen - 1;
    }
    if (path_is(path, plen, "/healthz")) {
        out->kind = AOR_ROUTE_HEALTHZ;
    } else if (path_is(path, plen, "/readyz")) {
        out->kind = AOR_ROUTE_READYZ;
    } else if (path_is(path, plen, "/metrics")) {
        out->kind = AOR_ROUTE_METRICS;
    } else if (path_is(path, plen, "/status")) {
        out->kind = AOR_ROUTE_STATUS;
    } else if (path_is(path, plen, "/status.json")) {
        out->kind = AOR_ROUTE_STATUS_JSON;
    } else if (has_prefix(path, plen, PREFIX_DEPLOYMENTS)) {
        const char *name = path + strlen(PREFIX_DEPLOYMENTS), *end = path + plen, *slash;
        slash = memchr(name, '/', end - name);
        out->kind = AOR_ROUTE_BAD;
        if (slash == NULL || !aor_route_valid_name(name, slash - name) || !valid_op(slash + 1, end - slash - 1))
            return;
        out->kind = AOR_ROUTE_DEPLOYMENT;
        out->deployment = name;
        out->deployment_len = slash - name;
        out->op = slash + 1;
        out->op_len = end - slash - 1;
    } else if (has_prefix(path, plen, PREFIX_OPENAI_V1) || has_prefix(path, plen, PREFIX_V1)) {
        size_t skip = has_prefix(path, plen, PREFIX_V1) ? strlen(PREFIX_V1) : strlen(PREFIX_OPENAI_V1);
        out->kind = AOR_ROUTE_BAD;
        if (!valid_op(path + skip, plen - skip))
            return;
        out->kind = AOR_ROUTE_V1;
        out->op = path + skip;
        out->op_len = plen - skip;
    } else {
        out->kind = AOR_ROUTE_NOT_FOUND;
    }
}

/*
 * The inference operations (Azure OpenAI data plane, 2024-10-21 GA and the v1 API), POST only.
 * Multipart ones (audio transcriptions/translations, image edits) are served on the
 * deployments path only: on /v1 the model would be a multipart field, which is not read.
 */
static const char *const deployment_ops[] = {
    "chat/completions",   "completions",  "embeddings",         "audio/transcriptions",
    "audio/translations", "audio/speech", "images/generations", "images/edits",
};
static const char *const v1_ops[] = {
    "chat/completions", "completions", "embeddings", "responses", "audio/speech", "images/generations",
};

static int op_in(const struct aor_route *route, const char *const *ops, size_t n)
{
    size_t i;

    for (i = 0; i != n; ++i)
        if (path_is(route->op, route->op_len, ops[i]))
            return 1;
    return 0;
}

/* every segment after the leading '/' is a valid name: nothing to normalise, nothing to escape */
static int clean_segments(const char *path, size_t len)
{
    return len > 1 && path[0] == '/' && valid_op(path + 1, len - 1);
}

static int passthrough_listed(const struct aor_route *route, const char *method, size_t method_len, const struct aor_config *conf)
{
    size_t i;

    for (i = 0; i != conf->num_passthrough; ++i) {
        const struct aor_passthrough_conf *pt = conf->passthrough + i;
        if (strlen(pt->method) != method_len || memcmp(pt->method, method, method_len) != 0)
            continue;
        if (pt->prefix ? has_prefix(route->path, route->path_len, pt->path) : path_is(route->path, route->path_len, pt->path))
            return 1;
    }
    return 0;
}

enum aor_route_access aor_route_authorize(struct aor_route *route, const char *method, size_t method_len,
                                          const struct aor_config *conf)
{
    int known = 0;

    if (route->kind == AOR_ROUTE_DEPLOYMENT)
        known = op_in(route, deployment_ops, sizeof(deployment_ops) / sizeof(deployment_ops[0]));
    else if (route->kind == AOR_ROUTE_V1)
        known = op_in(route, v1_ops, sizeof(v1_ops) / sizeof(v1_ops[0]));
    else if (route->kind != AOR_ROUTE_NOT_FOUND)
        return AOR_ACCESS_NOT_FOUND;
    if (known && method_len == 4 && memcmp(method, "POST", 4) == 0)
        return AOR_ACCESS_INFERENCE;
    if (clean_segments(route->path, route->path_len) && passthrough_listed(route, method, method_len, conf)) {
        route->passthrough = 1;
        if (route->kind == AOR_ROUTE_NOT_FOUND)
            route->kind = AOR_ROUTE_RAW;
        return AOR_ACCESS_PASSTHROUGH;
    }
    /* the model list (the SDKs' models.list / models.retrieve): unless listed above, the router's own.
     * /openai/models is where AzureOpenAI({endpoint}) asks; /openai/v1/models and /v1/models the v1 API's */
    if (route->kind == AOR_ROUTE_NOT_FOUND && has_prefix(route->path, route->path_len, "/openai/models")) {
        route->op = route->path + 8;
        route->op_len = route->path_len - 8;
        if (method_len == 3 && memcmp(method, "GET", 3) == 0 &&
            (path_is(route->op, route->op_len, "models") || (route->op_len > 7 && memcmp(route->op, "models/", 7) == 0 &&
                                                             aor_route_valid_name(route->op + 7, route->op_len - 7)))) {
            route->models = 1;
            return AOR_ACCESS_MODELS;
        }
        route->op = NULL;
        route->op_len = 0;
    }
    if (route->kind == AOR_ROUTE_V1 && method_len == 3 && memcmp(method, "GET", 3) == 0 &&
        (path_is(route->op, route->op_len, "models") ||
         (route->op_len > 7 && memcmp(route->op, "models/", 7) == 0 && aor_route_valid_name(route->op + 7, route->op_len - 7)))) {
        route->models = 1;
        return AOR_ACCESS_MODELS;
    }
    return known ? AOR_ACCESS_METHOD_NOT_ALLOWED : AOR_ACCESS_NOT_FOUND;
}

int aor_route_query_param(const char *query, size_t query_len, const char *name, const char **value, size_t *value_len)
{
    size_t nlen = strlen(name), i = 0;

    while (query != NULL && i < query_len) {
        const char *amp = memchr(query + i, '&', query_len - i);
        size_t end = amp != NULL ? (size_t)(amp - query) : query_len;
        if (end - i > nlen && memcmp(query + i, name, nlen) == 0 && query[i + nlen] == '=') {
            *value = query + i + nlen + 1;
            *value_len = end - i - nlen - 1;
            return 1;
        }
        i = end + 1;
    }
    return 0;
}

struct out {
    char *buf;
    size_t cap, len;
    int overflow;
};

static void put(struct out *o, const char *s, size_t len)
{
    if (o->len + len >= o->cap) {
        o->overflow = 1;
        return;
    }
    memcpy(o->buf + o->len, s, len);
    o->len += len;
}

#define PUTS(o, s) put((o), (s), strlen(s))

static int param_is(const char *p, size_t len, const char *name)
{
    size_t nlen = strlen(name);
    return (len == nlen || (len > nlen && p[nlen] == '=')) && memcmp(p, name, nlen) == 0;
}

static int hexdigit(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

int aor_route_param_named(const char *p, size_t plen, const char *name)
{
    size_t i = 0, n = 0, nlen = strlen(name);

    while (i != plen && p[i] != '=') {
        char c = p[i];
        if (c == '%' && i + 2 < plen && hexdigit(p[i + 1]) >= 0 && hexdigit(p[i + 2]) >= 0) {
            c = (char)(hexdigit(p[i + 1]) * 16 + hexdigit(p[i + 2]));
            i += 3;
        } else {
            ++i;
        }
        if (c >= 'A' && c <= 'Z')
            c = (char)(c + 32);
        if (n == nlen || c != name[n])
            return 0;
        ++n;
    }
    return n == nlen;
}

int aor_route_upstream_path(const struct aor_route *route, enum aor_provider provider, const char *upstream_name,
                            size_t upstream_len, char *buf, size_t cap)
{
    struct out o = {buf, cap, 0, 0};
    char sep = '?';
    size_t i = 0;

    if (route->kind == AOR_ROUTE_RAW) {
        /* an operator-listed path outside the data-plane prefixes: as the client sent it */
        put(&o, route->path, route->path_len);
    } else if (provider == AOR_PROVIDER_OPENAI) {
        /* the OpenAI API: /v1/{op}, the model travels in the body */
        PUTS(&o, "/v1/");
    } else if (route->kind == AOR_ROUTE_DEPLOYMENT) {
        PUTS(&o, "/openai/deployments/");
        put(&o, upstream_name, upstream_len);
        PUTS(&o, "/");
    } else {
        PUTS(&o, "/openai/v1/");
    }
    if (route->kind != AOR_ROUTE_RAW)
        put(&o, route->op, route->op_len);

    while (route->query != NULL && i < route->query_len) {
        const char *p = route->query + i, *amp = memchr(p, '&', route->query_len - i);
        size_t plen = amp != NULL ? (size_t)(amp - p) : route->query_len - i;
        i += plen + 1;
        /* a client credential never goes upstream, however its name is spelt or encoded */
        if (plen == 0 || aor_route_param_named(p, plen, "subscription-key"))
            continue;
        if (provider == AOR_PROVIDER_OPENAI && param_is(p, plen, "api-version"))
            continue;
        put(&o, &sep, 1);
        put(&o, p, plen);
        sep = '&';
    }
    if (o.overflow)
        return -1;
    buf[o.len] = '\0';
    return (int)o.len;
}
