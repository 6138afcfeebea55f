/*
 * config.c — backends.yaml (SPEC §3) into a struct aor_config.
 *
 * Two passes over the text. A streaming pre-scan with libyaml's event API bounds what
 * a document may cost before anything is built: nesting depth (libyaml's scanner is
 * quadratic in it), the number of anchors, how far aliases expand, one document only.
 * Then yaml_parser_load() builds the node tree and a schema walk reads it. The walk
 * never stops at the first problem: each one is printed as "file:line: key.path: what"
 * and the load fails at the end if there was any. Secrets named by *_env / *_file are
 * resolved here, and no message ever carries a secret value — only the variable or
 * the file that holds it.
 */
#ifndef _GNU_SOURCE
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* GNU strerror_r, explicit_bzero */
#endif
#endif
#include "config.h"
#include "metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>
#include "tenant.h"

#define MAX_CONFIG_BYTES (1024 * 1024)
#define MAX_SECRET_BYTES (64 * 1024)
#define MAX_DEPTH 64               /* the schema needs 5 */
#define MAX_ANCHORS 256            /* libyaml resolves each alias by a linear search */
#define MAX_EXPANDED_NODES 1000000 /* nodes the walk may visit once aliases are expanded */
#define MAX_SECRET_SCAN_DEPTH 16
#define MAX_LISTENERS 64
#define MAX_BACKENDS 1024
#define MAX_JWT_ISSUERS 64
#define MAX_STATIC_KEYS 1000
#define MAX_THREADS 256
#define MAX_MS INT64_C(86400000) /* one day: keeps "now + timeout" far from overflow */
#define MAX_BODY_BYTES INT64_C(1073741824)
#define MAX_BACKEND_TPM INT64_C(1000000000000)
#define MIN_HS_SECRET_BYTES 32 /* RFC 7518 §3.2: at least the hash size */
#define KP_MAX 256             /* key paths in messages ("backends[3].auth.key_env") */

#define DEFAULT_ADDRESS "0.0.0.0"
#define DEFAULT_PREFIX "aoai:"
#define DEFAULT_IMDS "http://169.254.169.254/metadata/identity/oauth2/token"
#define DEFAULT_AUTHORITY "https://login.microsoftonline.com/"
#define DEFAULT_RESOURCE "https://cognitiveservices.azure.com"
#define DEFAULT_REDIS_RESOURCE "https://redis.azure.com"
#define DEFAULT_FEDERATION_AUDIENCE "api://AzureADTokenExchange"
#define DEFAULT_OPENAI_URL "https://api.openai.com"

const char aor_config_deployment_unchanged[] = "";

/* the keys each mapping of SPEC §3 may have (besides x-*); tenants:, deployments: and required_claims: name their own */
static const char *const root_keys[] = {"listen", "threads", "redis",    "limits",      "circuit", "metrics",
                                        "auth",   "tenants", "backends", "passthrough", NULL};
static const char *const listen_keys[] = {"address", "port", "tls", NULL};
static const char *const tls_keys[] = {"cert_file", "key_file", "client_ca_file", "client_cert", NULL};
static const char *const redis_keys[] = {"url", "prefix", "on_failure", "password_env", "password_file", "ca_file", "auth", NULL};
/* redis.auth (SPEC §3, Entra ID auth for Azure Redis): a backend credential's keys plus object_id, per type */
static const char *const redis_auth_keys[] = {
    "type",           "object_id",  "client_id",   "tenant_id", "token_file", "imds_endpoint",
    "authority_host", "secret_env", "secret_file", "resource",  NULL};
static const char *const redis_mi_keys[] = {"type", "object_id", "client_id", "imds_endpoint", "resource", NULL};
static const char *const redis_wi_keys[] = {"type",       "object_id",      "tenant_id", "client_id",
                                            "token_file", "authority_host", "resource",  NULL};
static const char *const redis_secret_keys[] = {"type",        "object_id",      "tenant_id", "client_id", "secret_env",
                                                "secret_file", "authority_host", "resource",  NULL};
static const char *const limits_keys[] = {"max_body_bytes",          "max_header_bytes",
                                          "max_header_count",        "upstream_timeout_ms",
                                          "connect_timeout_ms",      "max_attempts",
                                          "max_cooldown_ms",         "default_cooldown_ms",
                                          "drain_timeout_ms",        "max_connections",
                                          "max_inflight_body_bytes", "max_streams_per_connection",
                                          "max_backend_connections", NULL};
static const char *const circuit_keys[] = {"failures", "open_ms", NULL};
static const char *const metrics_keys[] = {"address", "port", "max_tenants", NULL};
static const char *const auth_keys[] = {"mode", "same_tenant", "jwt", "keys", NULL};
static const char *const issuer_keys[] = {"issuer",
                                          "openid_config",
                                          "jwks_uri",
                                          "jwks_file",
                                          "secret_env",
                                          "secret_file",
                                          "audiences",
                                          "required_claims",
                                          "tenant_claims",
                                          "clock_skew_s",
                                          "max_token_lifetime_s",
                                          "algorithms",
                                          "jwks_refetch_cooldown_s",
                                          NULL};
static const char *const auth_keys_keys[] = {"headers", "static", NULL};
static const char *const static_key_keys[] = {"sha256", "tenant", NULL};
static const char *const tenant_keys[] = {"tpm", "rpm", "tokens_per_day", "tokens_per_month", "deployments", "default_max_tokens",
                                          NULL};
static const char *const backend_keys[] = {"name",   "url", "region",      "provider", "priority",
                                           "weight", "tpm", "deployments", "auth",     NULL};
/* backends[].auth, per type (indexed by enum aor_cred_type) */
static const char *const cred_api_key_keys[] = {"type", "key_env", "key_file", NULL};
static const char *const cred_mi_keys[] = {"type", "client_id", "imds_endpoint", "resource", NULL};
static const char *const cred_wi_keys[] = {"type", "tenant_id", "client_id", "token_file", "authority_host", "resource", NULL};
static const char *const cred_secret_keys[] = {"type",        "tenant_id",      "client_id", "secret_env",
                                               "secret_file", "authority_host", "resource",  NULL};
static const char *const cred_federation_keys[] = {
    "type",      "token_url",       "client_id", "client_secret_env", "client_secret_file",
    "tenant_id", "azure_client_id", "audience",  "authority_host",    "resource",
    NULL};
static const char *const cred_openai_mi_keys[] = {
    "type", "identity_provider_id", "service_account_id", "token_url", "subject", "client_id", "imds_endpoint", NULL};
static const char *const cred_openai_wi_keys[] = {
    "type",      "identity_provider_id", "service_account_id", "token_url", "subject", "tenant_id",
    "client_id", "token_file",           "authority_host",     NULL};
static const char *const cred_openai_file_keys[] = {"type", "identity_provider_id", "service_account_id", "token_url", "subject",
                                                    NULL};
static const char *const subject_keys[] = {"type", "resource", "path", NULL};

struct ctx {
    const char *name;
    FILE *errs;
    unsigned problems, warnings;
    int oom_reported;
    yaml_document_t *doc;
    struct aor_config *conf;
    unsigned flags; /* AOR_CONFIG_* of aor_config_load_flags */
};

/* what a shape-only load (--check --no-secrets) stores for a secret it did not resolve: visible
 * ASCII, longer than any minimum length, never sent anywhere (such a config only reports) */
static const char shape_placeholder[] = "shape-only-check-placeholder-not-a-secret-0123456789";

/* 1 when this load skips secrets and readable-file checks at key path `kp` */
static int skip_secrets(const struct ctx *c, const char *kp)
{
    if (!(c->flags & AOR_CONFIG_NO_SECRETS))
        return 0;
    return !((c->flags & AOR_CONFIG_REDIS_SECRET) && strcmp(kp, "redis") == 0);
}

typedef const char *(*name_check_cb)(const char *s, size_t len);

/* ---- problems ---------------------------------------------------------------------------------------------------- */

__attribute__((format(printf, 3, 4))) static void problem_at(struct ctx *c, size_t line, const char *fmt, ...)
{
    va_list ap;

    ++c->problems;
    if (c->errs == NULL)
        return;
    fprintf(c->errs, "%s:%zu: ", c->name, line);
    va_start(ap, fmt);
    vfprintf(c->errs, fmt, ap);
    va_end(ap);
    fputc('\n', c->errs);
}

/* "file:line: warning: ..." — printed, but the config still loads (--check exits 0) */
__attribute__((format(printf, 3, 4))) static void warning_at(struct ctx *c, size_t line, const char *fmt, ...)
{
    va_list ap;

    ++c->warnings;
    if (c->errs == NULL)
        return;
    fprintf(c->errs, "%s:%zu: warning: ", c->name, line);
    va_start(ap, fmt);
    vfprintf(c->errs, fmt, ap);
    va_end(ap);
    fputc('\n', c->errs);
}

static size_t line_of(const yaml_node_t *n)
{
    return n != NULL ? n->start_mark.line + 1 : 1;
}

#define problem(c, node, ...) problem_at((c), line_of(node), __VA_ARGS__)
#define warning(c, node, ...) warning_at((c), line_of(node), __VA_ARGS__)

static void oom(struct ctx *c)
{
    if (c->oom_reported) {
        ++c->problems;
        return;
    }
    c->oom_reported = 1;
    problem_at(c, 1, "out of memory");
}

static void *xcalloc(struct ctx *c, size_t n, size_t size)
{
    void *p = calloc(n != 0 ? n : 1, size);
    if (p == NULL)
        oom(c);
    return p;
}

static char *xstrndup(struct ctx *c, const char *s, size_t len)
{
    char *p = malloc(len + 1);
    if (p == NULL) {
        oom(c);
        return NULL;
    }
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

static char *xstrdup(struct ctx *c, const char *s)
{
    return xstrndup(c, s, strlen(s));
}

static const char *errstr(int err, char *buf, size_t size)
{
    return strerror_r(err, buf, size);
}

/* key paths: "" + "listen" -> "listen", "listen" + 0 -> "listen[0]", "listen[0]" + "port" -> "listen[0].port" */
static const char *kp_key(char *buf, const char *kp, const char *key, size_t keylen)
{
    int n = *kp != '\0' ? snprintf(buf, KP_MAX, "%s.%.*s", kp, (int)keylen, key) : snprintf(buf, KP_MAX, "%.*s", (int)keylen, key);
    if (n < 0)
        buf[0] = '\0';
    /* keys come from the file: keep control characters out of the terminal */
    for (char *p = buf; *p != '\0'; ++p)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    return buf;
}

static const char *kp_join(char *buf, const char *kp, const char *key)
{
    return kp_key(buf, kp, key, strlen(key));
}

static const char *kp_index(char *buf, const char *kp, size_t i)
{
    if (snprintf(buf, KP_MAX, "%s[%zu]", kp, i) < 0)
        buf[0] = '\0';
    return buf;
}

/* ---- nodes ------------------------------------------------------------------------------------------------------- */

static yaml_node_t *node_at(struct ctx *c, int index)
{
    return yaml_document_get_node(c->doc, index);
}

static int is_scalar(const yaml_node_t *n)
{
    return n != NULL && n->type == YAML_SCALAR_NODE;
}

static const char *sval(const yaml_node_t *n)
{
    return (const char *)n->data.scalar.value;
}

static size_t slen(const yaml_node_t *n)
{
    return n->data.scalar.length;
}

static int scalar_is(const yaml_node_t *n, const char *s)
{
    size_t len = strlen(s);
    return is_scalar(n) && slen(n) == len && memcmp(sval(n), s, len) == 0;
}

/* YAML core-schema null: an empty plain scalar, ~, null, Null, NULL */
static int is_null(const yaml_node_t *n)
{
    if (!is_scalar(n) || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return 0;
    return slen(n) == 0 || scalar_is(n, "~") || scalar_is(n, "null") || scalar_is(n, "Null") || scalar_is(n, "NULL");
}

static int is_merge_key(const yaml_node_t *n)
{
    return n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE && scalar_is(n, "<<");
}

static size_t seq_len(const yaml_node_t *n)
{
    return (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
}

static yaml_node_t *seq_item(struct ctx *c, const yaml_node_t *n, size_t i)
{
    return node_at(c, n->data.sequence.items.start[i]);
}

static size_t map_len(const yaml_node_t *n)
{
    return (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
}

/* the value of `key` (first occurrence), NULL when absent */
static yaml_node_t *lookup(struct ctx *c, const yaml_node_t *map, const char *key)
{
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; ++p)
        if (scalar_is(node_at(c, p->key), key))
            return node_at(c, p->value);
    return NULL;
}

struct keyref {
    const char *s;
    size_t len, index;
    size_t line;
};

static int keyref_cmp(const void *a, const void *b)
{
    const struct keyref *x = a, *y = b;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    int r = memcmp(x->s, y->s, x->len);
    if (r != 0)
        return r;
    return x->index < y->index ? -1 : x->index > y->index;
}

/*
 * 1 when `n` is a mapping. Reports, for every mapping the schema reads, keys that are not
 * strings, merge keys (libyaml does not merge: they would be silently ignored) and
 * duplicate keys (sorted, so a large mapping costs n log n).
 */
static int check_map(struct ctx *c, yaml_node_t *n, const char *kp)
{
    const char *what = *kp != '\0' ? kp : "the configuration";
    char buf[KP_MAX];
    struct keyref *keys;
    size_t n_keys = 0, i = 0;

    if (n == NULL || n->type != YAML_MAPPING_NODE) {
        problem(c, n, "%s: expected a mapping", what);
        return 0;
    }
    if ((keys = xcalloc(c, map_len(n), sizeof(*keys))) == NULL)
        return 0;
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; ++p, ++i) {
        yaml_node_t *k = node_at(c, p->key);
        if (!is_scalar(k)) {
            problem(c, k, "%s: mapping keys must be strings", what);
            continue;
        }
        if (is_merge_key(k)) {
            problem(c, k, "%s: merge keys (<<) are not supported", what);
            continue;
        }
        keys[n_keys++] = (struct keyref){sval(k), slen(k), i, line_of(k)};
    }
    qsort(keys, n_keys, sizeof(*keys), keyref_cmp);
    for (i = 1; i < n_keys; ++i)
        if (keys[i].len == keys[i - 1].len && memcmp(keys[i].s, keys[i - 1].s, keys[i].len) == 0)
            problem_at(c, keys[i].line, "%s: duplicate key", kp_key(buf, kp, keys[i].s, keys[i].len));
    free(keys);
    return 1;
}

static const char *const secret_keys[] = {"key", "api_key", "secret", "client_secret", "password", NULL};

static int is_secret_key(const yaml_node_t *k)
{
    for (size_t i = 0; secret_keys[i] != NULL; ++i)
        if (scalar_is(k, secret_keys[i]))
            return 1;
    return 0;
}

/* ---- known keys (SPEC §3: an unknown key is an error, the nearest known name suggested) ---------------------------- */

#define MAX_SUGGEST_LEN 64 /* keys longer than this get no suggestion (no known key comes close) */

static int lower(int ch)
{
    return ch >= 'A' && ch <= 'Z' ? ch + ('a' - 'A') : ch;
}

/*
 * Optimal string alignment distance (Levenshtein plus adjacent transpositions, so
 * "requried" is one edit from "required"), case-insensitive. Both lengths are at most
 * MAX_SUGGEST_LEN: three rows on the stack.
 */
static size_t edit_distance(const char *a, size_t alen, const char *b, size_t blen)
{
    size_t rows[3][MAX_SUGGEST_LEN + 1], *prev2 = rows[0], *prev = rows[1], *cur = rows[2];

    for (size_t j = 0; j <= blen; ++j)
        prev[j] = j;
    for (size_t i = 1; i <= alen; ++i) {
        cur[0] = i;
        for (size_t j = 1; j <= blen; ++j) {
            size_t cost = lower(a[i - 1]) != lower(b[j - 1]);
            size_t d = prev[j] + 1;
            if (cur[j - 1] + 1 < d)
                d = cur[j - 1] + 1;
            if (prev[j - 1] + cost < d)
                d = prev[j - 1] + cost;
            if (i > 1 && j > 1 && lower(a[i - 1]) == lower(b[j - 2]) && lower(a[i - 2]) == lower(b[j - 1]) && prev2[j - 2] + 1 < d)
                d = prev2[j - 2] + 1;
            cur[j] = d;
        }
        size_t *t = prev2;
        prev2 = prev;
        prev = cur;
        cur = t;
    }
    return prev[blen];
}

/* case-insensitive: `s` (len bytes) starts with `prefix` */
static int starts_with_ci(const char *s, size_t len, const char *prefix)
{
    size_t plen = strlen(prefix);
    return len >= plen && strncasecmp(s, prefix, plen) == 0;
}

/*
 * The known name an unknown `key` most likely meant, or NULL: the nearest by edit
 * distance when it is within 2 edits and a third of the name ("priorty" -> "priority",
 * "tmp" -> "tpm"), else a known name of at least 4 characters that the key extends or
 * abbreviates ("authentication" -> "auth", "listener" -> "listen").
 */
static const char *suggest_key(const char *key, size_t len, const char *const *known)
{
    const char *best = NULL;
    size_t best_d = SIZE_MAX;

    if (len == 0 || len > MAX_SUGGEST_LEN)
        return NULL;
    for (size_t i = 0; known[i] != NULL; ++i) {
        size_t klen = strlen(known[i]);
        if (klen > MAX_SUGGEST_LEN || klen > len + 2 || len > klen + 2) /* the distance is at least the length difference */
            continue;
        size_t d = edit_distance(key, len, known[i], klen), longer = klen > len ? klen : len;
        if (d <= 2 && d * 3 <= longer && d < best_d) {
            best = known[i];
            best_d = d;
        }
    }
    if (best != NULL)
        return best;
    for (size_t i = 0; known[i] != NULL; ++i) {
        size_t klen = strlen(known[i]);
        if (klen >= 4 && (starts_with_ci(key, len, known[i]) || (len >= 4 && strncasecmp(known[i], key, len) == 0)))
            return known[i];
    }
    return NULL;
}

/*
 * Reports every key of mapping `n` (already passed check_map) that is not in `known`
 * (NULL-terminated), nor starts with "x-" (operators' notes). 0 = all known. With
 * `secrets_scanned` (scan_inline_secrets() covers this mapping), an inline secret such as
 * `password: ...` is left to that scan's clearer message.
 */
static int check_known_keys(struct ctx *c, yaml_node_t *n, const char *kp, const char *const *known, int secrets_scanned)
{
    char buf[KP_MAX], list[512] = "", name[MAX_SUGGEST_LEN + 1];
    int bad = 0;

    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; ++p) {
        yaml_node_t *k = node_at(c, p->key);
        size_t i;
        if (!is_scalar(k) || is_merge_key(k)) /* reported by check_map */
            continue;
        if (slen(k) >= 2 && strncmp(sval(k), "x-", 2) == 0)
            continue;
        for (i = 0; known[i] != NULL; ++i)
            if (scalar_is(k, known[i]))
                break;
        if (known[i] != NULL)
            continue;
        if (secrets_scanned && is_secret_key(k) && !is_null(node_at(c, p->value)))
            continue;
        ++bad;
        kp_key(buf, kp, sval(k), slen(k));
        /* the key again, quoted: at most MAX_SUGGEST_LEN bytes, control characters masked like the path */
        size_t nlen = slen(k) < MAX_SUGGEST_LEN ? slen(k) : MAX_SUGGEST_LEN;
        for (i = 0; i < nlen; ++i)
            name[i] = (unsigned char)sval(k)[i] < 0x20 || sval(k)[i] == 0x7f || sval(k)[i] == '"' ? '?' : sval(k)[i];
        name[nlen] = '\0';
        const char *guess = suggest_key(sval(k), slen(k), known);
        if (guess != NULL) {
            problem(c, k, "%s: unknown key \"%s%s\" (did you mean \"%s\"?)", buf, name, nlen < slen(k) ? "..." : "", guess);
            continue;
        }
        if (list[0] == '\0') {
            for (i = 0; known[i] != NULL; ++i) {
                if (i != 0)
                    strncat(list, known[i + 1] != NULL ? ", " : " or ", sizeof(list) - strlen(list) - 1);
                strncat(list, known[i], sizeof(list) - strlen(list) - 1);
            }
        }
        problem(c, k, "%s: unknown key \"%s%s\" (expected %s; x- keys are free)", buf, name, nlen < slen(k) ? "..." : "", list);
    }
    return bad == 0 ? 0 : -1;
}

/* ---- typed getters: 1 = value stored, 0 = key absent, -1 = problem reported ------------------------------------------- */

static int node_str(struct ctx *c, yaml_node_t *v, const char *where, char **out)
{
    if (!is_scalar(v)) {
        problem(c, v, "%s: expected a string", where);
        return -1;
    }
    if (is_null(v) || slen(v) == 0) {
        problem(c, v, "%s: must not be empty", where);
        return -1;
    }
    if (memchr(sval(v), '\0', slen(v)) != NULL) {
        problem(c, v, "%s: must not contain NUL characters", where);
        return -1;
    }
    *out = xstrndup(c, sval(v), slen(v));
    return *out != NULL ? 1 : -1;
}

static int get_str(struct ctx *c, yaml_node_t *map, const char *kp, const char *key, char **out)
{
    char buf[KP_MAX];
    yaml_node_t *v = lookup(c, map, key);
    return v != NULL ? node_str(c, v, kp_join(buf, kp, key), out) : 0;
}

static int missing(struct ctx *c, yaml_node_t *map, const char *kp, const char *key)
{
    char buf[KP_MAX];
    problem(c, map, "%s: missing required key", kp_join(buf, kp, key));
    return -1;
}

static int req_str(struct ctx *c, yaml_node_t *map, const char *kp, const char *key, char **out)
{
    int rc = get_str(c, map, kp, key, out);
    return rc != 0 ? rc : missing(c, map, kp, key);
}

/* decimal only: no 0x, no octal-looking leading zeros, no 1_000, no 1e3; 0 ok, -1 syntax, -2 overflow */
static int parse_int(const char *s, size_t len, int64_t *out)
{
    size_t i = 0;
    int neg = 0;
    uint64_t v = 0, lim;

    if (len > 0 && (s[0] == '-' || s[0] == '+'))
        neg = s[i++] == '-';
    if (i == len || (s[i] == '0' && len - i > 1))
        return -1;
    lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (; i < len; ++i) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (lim - d) / 10) {
            /* keep scanning: "99999999999999999999x" is not an integer at all */
            for (++i; i < len; ++i)
                if (s[i] < '0' || s[i] > '9')
                    return -1;
            return -2;
        }
        v = v * 10 + d;
    }
    *out = neg ? (v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v) : (int64_t)v;
    return 0;
}

static int node_int(struct ctx *c, yaml_node_t *v, const char *where, int64_t min, int64_t max, int64_t *out)
{
    int64_t x = 0;
    int rc = is_scalar(v) ? parse_int(sval(v), slen(v), &x) : -1;

    if (rc == 0 && x >= min && x <= max) {
        *out = x;
        return 1;
    }
    if (max == INT64_MAX)
        problem(c, v, "%s: expected an integer >= %" PRId64 "%s", where, min, rc == -2 ? " (value too large)" : "");
    else
        problem(c, v, "%s: expected an integer between %" PRId64 " and %" PRId64, where, min, max);
    return -1;
}

static int get_int(struct ctx *c, yaml_node_t *map, const char *kp, const char *key, int64_t min, int64_t max, int64_t *out)
{
    char buf[KP_MAX];
    yaml_node_t *v = lookup(c, map, key);
    return v != NULL ? node_int(c, v, kp_join(buf, kp, key), min, max, out) : 0;
}

/* index of the value in `names` (NULL-terminated) */
static int get_enum(struct ctx *c, yaml_node_t *map, const char *kp, const char *key, const char *const *names, int *out)
{
    char buf[KP_MAX], list[256] = "";
    yaml_node_t *v = lookup(c, map, key);

    if (v == NULL)
        return 0;
    for (int i = 0; names[i] != NULL; ++i) {
        if (scalar_is(v, names[i])) {
            *out = i;
            return 1;
        }
        if (i != 0)
            strncat(list, names[i + 1] != NULL ? ", " : " or ", sizeof(list) - strlen(list) - 1);
        strncat(list, names[i], sizeof(list) - strlen(list) - 1);
    }
    problem(c, v, "%s: expected %s", kp_join(buf, kp, key), list);
    return -1;
}

static int get_map(struct ctx *c, yaml_node_t *map, const char *kp, const char *key, yaml_node_t **out)
{
    char buf[KP_MAX];
    yaml_node_t *v = lookup(c, map, key);

    if (v == NULL || is_null(v)) /* "redis:" with nothing under it is the same as no redis */
        return 0;
    if (!check_map(c, v, kp_join(buf, kp, key)))
        return -1;
    *out = v;
    return 1;
}

static int get_seq(struct ctx *c, yaml_node_t *map, const char *kp, const char *key, yaml_node_t **out)
{
    char buf[KP_MAX];
    yaml_node_t *v = lookup(c, map, key);

    if (v == NULL || is_null(v))
        return 0;
    if (v->type != YAML_SEQUENCE_NODE) {
        problem(c, v, "%s: expected a list", kp_join(buf, kp, key));
        return -1;
    }
    *out = v;
    return 1;
}

/* a list of non-empty strings, or a single string as a list of one; an empty list is a problem */
static int node_str_list(struct ctx *c, yaml_node_t *v, const char *where, name_check_cb check, char ***out, size_t *num)
{
    char buf[KP_MAX];
    size_t n;
    int rc = 1;

    if (is_null(v)) {
        problem(c, v, "%s: must not be empty", where);
        return -1;
    }
    if (v->type == YAML_SCALAR_NODE) {
        n = 1;
    } else if (v->type == YAML_SEQUENCE_NODE) {
        if ((n = seq_len(v)) == 0) {
            problem(c, v, "%s: must not be empty", where);
            return -1;
        }
    } else {
        problem(c, v, "%s: expected a list of strings", where);
        return -1;
    }
    if ((*out = xcalloc(c, n, sizeof(**out))) == NULL)
        return -1;
    *num = n;
    for (size_t i = 0; i < n; ++i) {
        yaml_node_t *item = v->type == YAML_SCALAR_NODE ? v : seq_item(c, v, i);
        const char *item_kp = v->type == YAML_SCALAR_NODE ? where : kp_index(buf, where, i), *bad;
        if (node_str(c, item, item_kp, &(*out)[i]) < 0) {
            rc = -1;
        } else if (check != NULL && (bad = check((*out)[i], strlen((*out)[i]))) != NULL) {
            problem(c, item, "%s: %s", item_kp, bad);
            rc = -1;
        }
    }
    return rc;
}

static int get_str_list(struct ctx *c, yaml_node_t *map, const char *kp, const char *key, name_check_cb check, char ***out,
                        size_t *num)
{
    char buf[KP_MAX];
    yaml_node_t *v = lookup(c, map, key);
    return v != NULL ? node_str_list(c, v, kp_join(buf, kp, key), check, out, num) : 0;
}

/* ---- value checks: NULL when fine, else what is wrong ------------------------------------------------------------- */

static const char *url_problem(const char *s)
{
    size_t skip = strncasecmp(s, "http://", 7) == 0 ? 7 : strncasecmp(s, "https://", 8) == 0 ? 8 : 0;

    if (skip == 0)
        return "must start with http:// or https://";
    if (s[skip] == '\0' || s[skip] == '/')
        return "has no host after the scheme";
    for (const char *p = s; *p != '\0'; ++p)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f)
            return "must not contain spaces or control characters";
    return NULL;
}

static int get_url(struct ctx *c, yaml_node_t *map, const char *kp, const char *key, char **out)
{
    char buf[KP_MAX];
    const char *bad;
    int rc = get_str(c, map, kp, key, out);

    if (rc == 1 && (bad = url_problem(*out)) != NULL) {
        problem(c, lookup(c, map, key), "%s: %s", kp_join(buf, kp, key), bad);
        free(*out);
        *out = NULL;
        return -1;
    }
    return rc;
}

static const char *check_backend_name(const char *s, size_t len)
{
    if (len < 1 || len > 64)
        goto bad;
    for (size_t i = 0; i < len; ++i)
        if (!((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_' ||
              s[i] == '.' || s[i] == '-'))
            goto bad;
    return NULL;
bad:
    return "must be 1 to 64 characters from A-Z a-z 0-9 _ . -";
}

/* deployment names end up in upstream paths ("/openai/deployments/{name}/...") and, as provider openai's
 * model, in a JSON body written without escaping */
static const char *check_deployment_name(const char *s, size_t len)
{
    if (len < 1 || len > 256 || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
        goto bad;
    for (size_t i = 0; i < len; ++i)
        if ((unsigned char)s[i] <= 0x20 || s[i] == 0x7f || strchr("/?#%\\\"", s[i]) != NULL)
            goto bad;
    return NULL;
bad:
    /* a quote or a backslash would end or escape the JSON string the name is written into (provider openai's model) */
    return "must be 1 to 256 characters without / ? # % \\ \", spaces or control characters, and not . or ..";
}

/* tenant names end up in Redis keys inside a {hash tag} */
static const char *check_tenant_name(const char *s, size_t len)
{
    /* the one rule of auth/tenant.h (also used for redis.prefix) */
    return aor_tenant_name_ok(s, len) ? NULL : "must be " AOR_TENANT_NAME_RULE;
}

static const char *check_header_name(const char *s, size_t len)
{
    if (len < 1 || len > 64)
        goto bad;
    for (size_t i = 0; i < len; ++i)
        if (!((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') ||
              strchr("!#$%&'*+-.^_`|~", s[i]) != NULL))
            goto bad;
    return NULL;
bad:
    return "must be an HTTP header name (1 to 64 token characters)";
}

/* an Entra tenant: a GUID or a domain; it becomes part of the token URL path */
static const char *check_entra_tenant(const char *s, size_t len)
{
    if (len < 1 || len > 128)
        goto bad;
    for (size_t i = 0; i < len; ++i)
        if (!((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_' ||
              s[i] == '.' || s[i] == '-'))
            goto bad;
    return NULL;
bad:
    return "expected a tenant ID (GUID) or domain name";
}

static const char *const jwt_algs[] = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
                                       "ES384", "ES512", "EdDSA", "HS256", "HS384", "HS512", NULL};

static const char *check_jwt_alg(const char *s, size_t len)
{
    for (size_t i = 0; jwt_algs[i] != NULL; ++i)
        if (strcmp(s, jwt_algs[i]) == 0)
            return NULL;
    return "unknown algorithm (expected RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512, EdDSA, HS256, HS384 "
           "or HS512)";
}

static int get_checked_str(struct ctx *c, yaml_node_t *map, const char *kp, const char *key, name_check_cb check, char **out)
{
    char buf[KP_MAX];
    const char *bad;
    int rc = get_str(c, map, kp, key, out);

    if (rc == 1 && (bad = check(*out, strlen(*out))) != NULL) {
        problem(c, lookup(c, map, key), "%s: %s", kp_join(buf, kp, key), bad);
        free(*out);
        *out = NULL;
        return -1;
    }
    return rc;
}

/* ---- files and secrets -------------------------------------------------------------------------------------------- */

enum { READ_NOT_REGULAR = -1, READ_TOO_LARGE = -2 };

/* reads a regular file of at most `max` bytes; returns 0, an errno value, READ_NOT_REGULAR or READ_TOO_LARGE */
static int read_file(const char *path, size_t max, char **out, size_t *outlen)
{
    struct stat st;
    char *buf = NULL;
    size_t len = 0;
    int fd, rc = 0;

    /* O_NONBLOCK: a FIFO named by mistake must not hang a reload */
    if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)) < 0)
        return errno;
    if (fstat(fd, &st) != 0) {
        rc = errno;
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = READ_NOT_REGULAR;
        goto out;
    }
    if ((buf = malloc(max + 1)) == NULL) {
        rc = ENOMEM;
        goto out;
    }
    for (;;) {
        ssize_t r = read(fd, buf + len, max + 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = errno;
            goto out;
        }
        if (r == 0)
            break;
        len += (size_t)r;
        if (len > max) {
            rc = READ_TOO_LARGE;
            goto out;
        }
    }
    buf[len] = '\0';
    *out = buf;
    *outlen = len;
    buf = NULL;
out:
    if (buf != NULL) {
        explicit_bzero(buf, len);
        free(buf);
    }
    close(fd);
    return rc;
}

static void report_read_error(struct ctx *c, yaml_node_t *at, const char *where, const char *path, int rc, size_t max)
{
    char ebuf[128];

    if (rc == READ_NOT_REGULAR)
        problem(c, at, "%s: \"%s\" is not a regular file", where, path);
    else if (rc == READ_TOO_LARGE)
        problem(c, at, "%s: \"%s\" is larger than %zu bytes", where, path, max);
    else
        problem(c, at, "%s: cannot read \"%s\": %s", where, path, errstr(rc, ebuf, sizeof(ebuf)));
}

static int check_readable(struct ctx *c, yaml_node_t *at, const char *where, const char *path)
{
    struct stat st;
    char ebuf[128];
    int fd, rc = -1;

    if (skip_secrets(c, where))
        return 0;
    if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)) < 0) {
        problem(c, at, "%s: cannot read \"%s\": %s", where, path, errstr(errno, ebuf, sizeof(ebuf)));
        return -1;
    }
    if (fstat(fd, &st) != 0)
        problem(c, at, "%s: cannot read \"%s\": %s", where, path, errstr(errno, ebuf, sizeof(ebuf)));
    else if (!S_ISREG(st.st_mode))
        problem(c, at, "%s: \"%s\" is not a regular file", where, path);
    else
        rc = 0;
    close(fd);
    return rc;
}

/*
 * A workload identity token file: the platform writes (and rotates) it, and the credential reads it
 * again at every refresh, off the request path. Not readable now is a warning (issue 9): at
 * start-up the projected volume may not be mounted yet; until it is, the credential has no token.
 */
static void warn_unreadable(struct ctx *c, yaml_node_t *at, const char *where, const char *path)
{
    struct stat st;
    char ebuf[128];
    int fd;

    if (skip_secrets(c, where))
        return;
    if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)) < 0) {
        warning(c, at, "%s: cannot read \"%s\" now: %s (read again at every token refresh; no token until it is readable)", where,
                path, errstr(errno, ebuf, sizeof(ebuf)));
        return;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        warning(c, at, "%s: \"%s\" is not a regular file (read again at every token refresh; no token until it is one)", where,
                path);
    close(fd);
}

/* a path to a file that must be readable now */
static int get_file(struct ctx *c, yaml_node_t *map, const char *kp, const char *key, char **out)
{
    char buf[KP_MAX];
    int rc = get_str(c, map, kp, key, out);

    if (rc == 1 && check_readable(c, lookup(c, map, key), kp_join(buf, kp, key), *out) != 0)
        return -1;
    return rc;
}

static void free_secret(char *s)
{
    if (s != NULL) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

enum secret_kind {
    SECRET_TOKEN, /* goes into an HTTP header or form: visible ASCII only */
    SECRET_BYTES, /* anything but NUL */
};

/*
 * The secret named by `env_key` (an environment variable) or `file_key` (a file whose
 * trailing whitespace is trimmed). 1 = *out set, 0 = neither key present, -1 = problem
 * reported. Messages name the variable or the file, never the value.
 */
static int get_secret(struct ctx *c, yaml_node_t *map, const char *kp, const char *env_key, const char *file_key,
                      enum secret_kind kind, char **out)
{
    char buf[KP_MAX], *env = NULL, *path = NULL, *value = NULL;
    size_t len = 0;
    int re = get_str(c, map, kp, env_key, &env), rf = get_str(c, map, kp, file_key, &path), rc = -1;
    const char *where;

    if (re < 0 || rf < 0)
        goto out;
    if (re == 1 && rf == 1) {
        problem(c, map, "%s: set only one of %s and %s", kp, env_key, file_key);
        goto out;
    }
    if (re == 0 && rf == 0) {
        rc = 0;
        goto out;
    }
    if (skip_secrets(c, kp)) { /* the reference's shape was checked above; its value is not looked at */
        *out = xstrdup(c, shape_placeholder);
        rc = *out != NULL ? 1 : -1;
        goto out;
    }
    if (env != NULL) {
        const char *v = getenv(env);
        where = kp_join(buf, kp, env_key);
        if (v == NULL || *v == '\0') {
            problem(c, lookup(c, map, env_key), "%s: environment variable %s is not set or empty", where, env);
            goto out;
        }
        if ((value = xstrdup(c, v)) == NULL)
            goto out;
        len = strlen(value);
        if (kind == SECRET_BYTES && (value[len - 1] == '\n' || value[len - 1] == '\r'))
            warning(c, lookup(c, map, env_key),
                    "%s: the value of %s ends with a line break, sent as is (a secret_file is trimmed, an environment "
                    "variable is not)",
                    where, env);
    } else {
        int err = read_file(path, MAX_SECRET_BYTES, &value, &len);
        where = kp_join(buf, kp, file_key);
        if (err != 0) {
            report_read_error(c, lookup(c, map, file_key), where, path, err, MAX_SECRET_BYTES);
            goto out;
        }
        while (len > 0 && strchr(" \t\r\n", value[len - 1]) != NULL)
            value[--len] = '\0';
        if (len == 0) {
            problem(c, lookup(c, map, file_key), "%s: \"%s\" is empty", where, path);
            goto out;
        }
    }
    for (size_t i = 0; i < len; ++i) {
        unsigned char ch = (unsigned char)value[i];
        if (ch == 0 || (kind == SECRET_TOKEN && (ch <= 0x20 || ch >= 0x7f))) {
            const char *what = kind == SECRET_TOKEN ? "spaces, control or non-ASCII characters" : "a NUL byte";
            if (env != NULL)
                problem(c, lookup(c, map, env_key), "%s: the value of %s contains %s", where, env, what);
            else
                problem(c, lookup(c, map, file_key), "%s: the content of \"%s\" contains %s", where, path, what);
            goto out;
        }
    }
    *out = value;
    value = NULL;
    rc = 1;
out:
    if (value != NULL) {
        explicit_bzero(value, len);
        free(value);
    }
    free(env);
    free(path);
    return rc;
}

/* SPEC §1: secrets never appear inline; any such key with a value under `n` is refused */
static void scan_inline_secrets(struct ctx *c, yaml_node_t *n, const char *kp, int depth)
{
    char buf[KP_MAX];

    if (n == NULL || depth > MAX_SECRET_SCAN_DEPTH)
        return;
    if (n->type == YAML_SEQUENCE_NODE) {
        for (size_t i = 0; i < seq_len(n); ++i)
            scan_inline_secrets(c, seq_item(c, n, i), kp_index(buf, kp, i), depth + 1);
    } else if (n->type == YAML_MAPPING_NODE) {
        for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; ++p) {
            yaml_node_t *k = node_at(c, p->key), *v = node_at(c, p->value);
            if (!is_scalar(k))
                continue;
            kp_key(buf, kp, sval(k), slen(k));
            if (is_secret_key(k) && v != NULL && !is_null(v))
                problem(c, k, "%s: secrets must come from an environment variable (*_env) or a file (*_file)", buf);
            scan_inline_secrets(c, v, buf, depth + 1);
        }
    }
}

/* ---- sections ----------------------------------------------------------------------------------------------------- */

static int parse_ip(const char *s, unsigned char addr[16], int *family)
{
    if (inet_pton(AF_INET, s, addr) == 1) {
        *family = AF_INET;
        return 0;
    }
    if (inet_pton(AF_INET6, s, addr) == 1) {
        *family = AF_INET6;
        return 0;
    }
    return -1;
}

static int same_endpoint(const char *a, uint16_t aport, const char *b, uint16_t bport)
{
    unsigned char x[16], y[16];
    int fx, fy;

    if (a == NULL || b == NULL || aport == 0 || aport != bport || parse_ip(a, x, &fx) != 0 || parse_ip(b, y, &fy) != 0)
        return 0;
    return fx == fy && memcmp(x, y, fx == AF_INET ? 4 : 16) == 0;
}

/* 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104 */
static int is_loopback_ip(const char *s)
{
    static const unsigned char v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const unsigned char v6loop[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    unsigned char a[16];
    int family;

    if (s == NULL || parse_ip(s, a, &family) != 0)
        return 0;
    if (family == AF_INET)
        return a[0] == 127;
    return memcmp(a, v6loop, 16) == 0 || (memcmp(a, v4mapped, 12) == 0 && a[12] == 127);
}

/*
 * SPEC §3: an `http://` endpoint the router fetches keys or tokens from is allowed (loopback
 * tests, sidecars) but warned about when its host is not loopback (nor, for IMDS, the
 * link-local 169.254.0.0/16 the metadata service lives on, plain HTTP by design).
 */
static void warn_plain_http(struct ctx *c, yaml_node_t *at, const char *where, const char *url, int link_local_ok)
{
    char host[256];
    const char *h, *end;
    unsigned char a[16];
    int family;

    if (strncasecmp(url, "http://", 7) != 0)
        return;
    h = url + 7;
    end = h + strcspn(h, "/?#");
    for (const char *p = h; p < end; ++p) /* skip user:password@ */
        if (*p == '@')
            h = p + 1;
    if (*h == '[') {
        const char *close = memchr(h, ']', (size_t)(end - h));
        end = close != NULL ? close : end;
        ++h;
    } else {
        const char *colon = memchr(h, ':', (size_t)(end - h));
        end = colon != NULL ? colon : end;
    }
    if ((size_t)(end - h) >= sizeof(host))
        return;
    memcpy(host, h, (size_t)(end - h));
    host[end - h] = '\0';
    if (is_loopback_ip(host) || strcasecmp(host, "localhost") == 0)
        return;
    if (link_local_ok && parse_ip(host, a, &family) == 0 && family == AF_INET && a[0] == 169 && a[1] == 254)
        return;
    warning(c, at,
            "%s: plain http:// to a host that is not loopback: whoever is on the path can read or alter the keys and "
            "tokens fetched there; use https://",
            where);
}

/* get_url() of an endpoint the router itself calls for keys or tokens: warns about plain http:// off loopback */
static int get_endpoint_url(struct ctx *c, yaml_node_t *map, const char *kp, const char *key, char **out)
{
    char buf[KP_MAX];
    int rc = get_url(c, map, kp, key, out);

    if (rc == 1)
        warn_plain_http(c, lookup(c, map, key), kp_join(buf, kp, key), *out, strcmp(key, "imds_endpoint") == 0);
    return rc;
}

/* `address` (an IP literal, default 0.0.0.0) and `port` */
static void parse_endpoint(struct ctx *c, yaml_node_t *map, const char *kp, char **address, uint16_t *port)
{
    unsigned char addr[16];
    int family, rc;
    int64_t p;
    char buf[KP_MAX];

    if ((rc = get_str(c, map, kp, "address", address)) == 1 && parse_ip(*address, addr, &family) != 0) {
        problem(c, lookup(c, map, "address"), "%s: expected an IPv4 or IPv6 address", kp_join(buf, kp, "address"));
        free(*address);
        *address = NULL;
    } else if (rc == 0) {
        *address = xstrdup(c, DEFAULT_ADDRESS);
    }
    if ((rc = get_int(c, map, kp, "port", 1, 65535, &p)) == 1)
        *port = (uint16_t)p;
    else if (rc == 0)
        missing(c, map, kp, "port");
}

static void parse_tls(struct ctx *c, yaml_node_t *map, const char *kp, struct aor_listen_conf *l)
{
    static const char *const modes[] = {"none", "optional", "required", NULL};
    char buf[KP_MAX];
    int mode = AOR_CLIENT_CERT_NONE;

    l->tls.enabled = 1;
    check_known_keys(c, map, kp, tls_keys, 0);
    if (get_file(c, map, kp, "cert_file", &l->tls.cert_file) == 0)
        missing(c, map, kp, "cert_file");
    if (get_file(c, map, kp, "key_file", &l->tls.key_file) == 0)
        missing(c, map, kp, "key_file");
    int ca = get_file(c, map, kp, "client_ca_file", &l->tls.client_ca_file);
    int rc = get_enum(c, map, kp, "client_cert", modes, &mode);
    l->tls.client_cert = (enum aor_client_cert)mode;
    if (rc == 1 && mode != AOR_CLIENT_CERT_NONE && ca == 0)
        problem(c, map, "%s: missing required key (client_cert: %s needs it)", kp_join(buf, kp, "client_ca_file"), modes[mode]);
    /* a CA without client_cert would silently not ask for certificates */
    if (ca == 1 && rc == 0)
        problem(c, map, "%s: missing required key (client_ca_file is set: say optional or required)",
                kp_join(buf, kp, "client_cert"));
}

static void format_endpoint(char *buf, size_t size, const char *address, uint16_t port)
{
    snprintf(buf, size, strchr(address, ':') != NULL ? "[%s]:%u" : "%s:%u", address, (unsigned)port);
}

static void parse_listeners(struct ctx *c, yaml_node_t *top)
{
    struct aor_config *conf = c->conf;
    yaml_node_t *seq;
    char kp[KP_MAX], tls_kp[KP_MAX], ep[80];
    size_t n;
    int rc = get_seq(c, top, "", "listen", &seq);

    if (rc == 0)
        missing(c, top, "", "listen");
    if (rc != 1)
        return;
    if ((n = seq_len(seq)) == 0 || n > MAX_LISTENERS) {
        problem(c, seq, n == 0 ? "listen: must not be empty" : "listen: at most %d listeners", MAX_LISTENERS);
        return;
    }
    if ((conf->listeners = xcalloc(c, n, sizeof(*conf->listeners))) == NULL)
        return;
    conf->num_listeners = n;
    for (size_t i = 0; i < n; ++i) {
        struct aor_listen_conf *l = &conf->listeners[i];
        yaml_node_t *item = seq_item(c, seq, i), *tls;
        kp_index(kp, "listen", i);
        l->line = (int)line_of(item);
        if (!check_map(c, item, kp))
            continue;
        check_known_keys(c, item, kp, listen_keys, 0);
        parse_endpoint(c, item, kp, &l->address, &l->port);
        if (get_map(c, item, kp, "tls", &tls) == 1)
            parse_tls(c, tls, kp_join(tls_kp, kp, "tls"), l);
        for (size_t j = 0; j < i; ++j) {
            if (same_endpoint(l->address, l->port, conf->listeners[j].address, conf->listeners[j].port)) {
                format_endpoint(ep, sizeof(ep), l->address, l->port);
                problem(c, item, "%s: duplicate address:port %s (also listen[%zu])", kp, ep, j);
                break;
            }
        }
    }
}

static void parse_redis_auth(struct ctx *c, yaml_node_t *auth);

static void parse_redis(struct ctx *c, yaml_node_t *top)
{
    static const char *const failure_modes[] = {"open", "closed", NULL};
    struct aor_config *conf = c->conf;
    yaml_node_t *map, *auth;
    int mode = 0;

    if (get_map(c, top, "", "redis", &map) == 1) {
        check_known_keys(c, map, "redis", redis_keys, 1);
        if (get_map(c, map, "redis", "auth", &auth) == 1) {
            parse_redis_auth(c, auth);
            if (lookup(c, map, "password_env") != NULL || lookup(c, map, "password_file") != NULL)
                problem(c, lookup(c, map, "auth"),
                        "redis.auth: Entra ID authentication and password_env/password_file are exclusive (one AUTH)");
        }
        if (req_str(c, map, "redis", "url", &conf->redis.url) == 1) {
            const char *u = conf->redis.url, *auth_end, *at = NULL;
            size_t skip = strncmp(u, "rediss://", 9) == 0 ? 9 : strncmp(u, "redis://", 8) == 0 ? 8 : 0;
            if (skip == 0 || u[skip] == '\0' || u[skip] == '/') {
                problem(c, lookup(c, map, "url"), "redis.url: must start with redis:// or rediss:// (TLS) and name a host");
            } else {
                auth_end = u + skip + strcspn(u + skip, "/?#");
                for (const char *p = u + skip; p < auth_end; ++p)
                    if (*p == '@')
                        at = p;
                if (at != NULL && memchr(u + skip, ':', (size_t)(at - (u + skip))) != NULL)
                    problem(c, lookup(c, map, "url"),
                            "redis.url: secrets must come from an environment variable (*_env) or a file (*_file): "
                            "move the password to redis.password_env or redis.password_file");
                else if (at != NULL && conf->redis.cred.type != AOR_CRED_NONE)
                    problem(c, lookup(c, map, "url"),
                            "redis.url: no user name with redis.auth (the AUTH user is redis.auth.object_id)");
            }
        }
        get_checked_str(c, map, "redis", "prefix", check_tenant_name, &conf->redis.prefix);
        if (get_enum(c, map, "redis", "on_failure", failure_modes, &mode) == 1)
            conf->redis.fail_closed = mode == 1;
        get_secret(c, map, "redis", "password_env", "password_file", SECRET_BYTES, &conf->redis.password);
        get_file(c, map, "redis", "ca_file", &conf->redis.ca_file);
        scan_inline_secrets(c, map, "redis", 0);
    }
    if (conf->redis.prefix == NULL)
        conf->redis.prefix = xstrdup(c, DEFAULT_PREFIX);
}

static void parse_limits(struct ctx *c, yaml_node_t *top)
{
    struct aor_config *conf = c->conf;
    yaml_node_t *map;
    int64_t v;

    conf->limits.max_body_bytes = 16777216;
    conf->limits.upstream_timeout_ms = 120000;
    conf->limits.connect_timeout_ms = 10000;
    conf->limits.max_attempts = 3;
    conf->limits.max_cooldown_ms = 300000;
    conf->limits.default_cooldown_ms = 10000;
    conf->limits.drain_timeout_ms = 30000;
    conf->limits.max_header_bytes = 32768;
    conf->limits.max_header_count = 100;
    conf->limits.max_connections = 10000;
    conf->limits.max_inflight_body_bytes = 268435456;
    conf->limits.max_streams_per_connection = 100;
    conf->limits.max_backend_connections = 256;
    if (get_map(c, top, "", "limits", &map) == 1) {
        check_known_keys(c, map, "limits", limits_keys, 0);
        if (get_int(c, map, "limits", "max_body_bytes", 1, MAX_BODY_BYTES, &v) == 1)
            conf->limits.max_body_bytes = (uint64_t)v;
        if (get_int(c, map, "limits", "upstream_timeout_ms", 1, MAX_MS, &v) == 1)
            conf->limits.upstream_timeout_ms = (uint64_t)v;
        if (get_int(c, map, "limits", "connect_timeout_ms", 1, MAX_MS, &v) == 1)
            conf->limits.connect_timeout_ms = (uint64_t)v;
        if (get_int(c, map, "limits", "max_attempts", 1, 10, &v) == 1)
            conf->limits.max_attempts = (unsigned)v;
        if (get_int(c, map, "limits", "max_cooldown_ms", 1, MAX_MS, &v) == 1)
            conf->limits.max_cooldown_ms = (uint64_t)v;
        if (get_int(c, map, "limits", "default_cooldown_ms", 1, MAX_MS, &v) == 1)
            conf->limits.default_cooldown_ms = (uint64_t)v;
        if (get_int(c, map, "limits", "drain_timeout_ms", 1, MAX_MS, &v) == 1)
            conf->limits.drain_timeout_ms = (uint64_t)v;
        if (get_int(c, map, "limits", "max_header_bytes", 1024, 1048576, &v) == 1)
            conf->limits.max_header_bytes = (uint64_t)v;
        if (get_int(c, map, "limits", "max_header_count", 8, 1000, &v) == 1)
            conf->limits.max_header_count = (unsigned)v;
        if (get_int(c, map, "limits", "max_connections", 1, 1000000, &v) == 1)
            conf->limits.max_connections = (unsigned)v;
        if (get_int(c, map, "limits", "max_inflight_body_bytes", 1, INT64_C(68719476736), &v) == 1)
            conf->limits.max_inflight_body_bytes = (uint64_t)v;
        if (get_int(c, map, "limits", "max_streams_per_connection", 1, 256, &v) == 1)
            conf->limits.max_streams_per_connection = (unsigned)v;
        if (get_int(c, map, "limits", "max_backend_connections", 1, 100000, &v) == 1)
            conf->limits.max_backend_connections = (unsigned)v;
    }
    if (conf->limits.connect_timeout_ms > conf->limits.upstream_timeout_ms)
        conf->limits.connect_timeout_ms = conf->limits.upstream_timeout_ms;
    if (conf->limits.default_cooldown_ms > conf->limits.max_cooldown_ms)
        conf->limits.default_cooldown_ms = conf->limits.max_cooldown_ms;
}

static void parse_circuit(struct ctx *c, yaml_node_t *top)
{
    struct aor_config *conf = c->conf;
    yaml_node_t *map;
    int64_t v;

    conf->circuit.failures = 5;
    conf->circuit.open_ms = 30000;
    if (get_map(c, top, "", "circuit", &map) == 1) {
        check_known_keys(c, map, "circuit", circuit_keys, 0);
        if (get_int(c, map, "circuit", "failures", 1, 1000000, &v) == 1)
            conf->circuit.failures = (unsigned)v;
        if (get_int(c, map, "circuit", "open_ms", 1, MAX_MS, &v) == 1)
            conf->circuit.open_ms = (uint64_t)v;
    }
}

static void parse_metrics(struct ctx *c, yaml_node_t *top)
{
    struct aor_config *conf = c->conf;
    yaml_node_t *map;
    char ep[80];
    int64_t v;

    conf->metrics.max_tenants = AOR_METRICS_MAX_TENANTS;
    if (get_map(c, top, "", "metrics", &map) != 1)
        return;
    check_known_keys(c, map, "metrics", metrics_keys, 0);
    if (get_int(c, map, "metrics", "max_tenants", 0, AOR_METRICS_MAX_TENANTS_LIMIT, &v) == 1)
        conf->metrics.max_tenants = (unsigned)v;
    /* `metrics: { max_tenants: N }` alone keeps /metrics on every listener */
    if (lookup(c, map, "address") == NULL && lookup(c, map, "port") == NULL)
        return;
    conf->metrics.enabled = 1;
    parse_endpoint(c, map, "metrics", &conf->metrics.address, &conf->metrics.port);
    for (size_t i = 0; i < conf->num_listeners; ++i) {
        if (same_endpoint(conf->metrics.address, conf->metrics.port, conf->listeners[i].address, conf->listeners[i].port)) {
            format_endpoint(ep, sizeof(ep), conf->metrics.address, conf->metrics.port);
            problem(c, map, "metrics: %s is already listen[%zu]", ep, i);
            break;
        }
    }
}

static void parse_issuer(struct ctx *c, yaml_node_t *map, const char *kp, struct aor_jwt_issuer_conf *iss)
{
    static const char *const sources[] = {"openid_config", "jwks_uri", "jwks_file", "secret_env", "secret_file", NULL};
    char buf[KP_MAX], ckp[KP_MAX];
    yaml_node_t *claims;
    int64_t v;
    size_t n_sources = 0;

    iss->line = (int)line_of(map);
    check_known_keys(c, map, kp, issuer_keys, 1);
    req_str(c, map, kp, "issuer", &iss->issuer);
    for (size_t i = 0; sources[i] != NULL; ++i)
        n_sources += lookup(c, map, sources[i]) != NULL;
    if (n_sources != 1)
        problem(c, map, "%s: needs exactly one of openid_config, jwks_uri, jwks_file or secret_env", kp);
    get_endpoint_url(c, map, kp, "openid_config", &iss->openid_config);
    get_endpoint_url(c, map, kp, "jwks_uri", &iss->jwks_uri);
    get_file(c, map, kp, "jwks_file", &iss->jwks_file);
    if (get_secret(c, map, kp, "secret_env", "secret_file", SECRET_BYTES, &iss->secret) == 1 &&
        strlen(iss->secret) < MIN_HS_SECRET_BYTES) {
        int env = lookup(c, map, "secret_env") != NULL;
        problem(c, lookup(c, map, env ? "secret_env" : "secret_file"), "%s: HS secrets must be at least %d bytes (RFC 7518)",
                kp_join(buf, kp, env ? "secret_env" : "secret_file"), MIN_HS_SECRET_BYTES);
    }

    if (get_str_list(c, map, kp, "audiences", NULL, &iss->audiences, &iss->num_audiences) == 0)
        missing(c, map, kp, "audiences");

    if (get_map(c, map, kp, "required_claims", &claims) == 1 && map_len(claims) != 0) {
        kp_join(ckp, kp, "required_claims");
        if ((iss->required_claims = xcalloc(c, map_len(claims), sizeof(*iss->required_claims))) != NULL) {
            for (yaml_node_pair_t *p = claims->data.mapping.pairs.start; p < claims->data.mapping.pairs.top; ++p) {
                yaml_node_t *k = node_at(c, p->key);
                if (!is_scalar(k) || is_merge_key(k)) /* reported by check_map */
                    continue;
                kp_key(buf, ckp, sval(k), slen(k));
                if (node_str(c, k, buf, &iss->required_claims[iss->num_required_claims].claim) < 0)
                    continue;
                node_str_list(c, node_at(c, p->value), buf, NULL, &iss->required_claims[iss->num_required_claims].values,
                              &iss->required_claims[iss->num_required_claims].num_values);
                ++iss->num_required_claims;
            }
        }
    }

    if (get_str_list(c, map, kp, "tenant_claims", NULL, &iss->tenant_claims, &iss->num_tenant_claims) == 0) {
        static const char *const defaults[] = {"tid", "azp", "sub"};
        if ((iss->tenant_claims = xcalloc(c, 3, sizeof(char *))) != NULL) {
            iss->num_tenant_claims = 3;
            for (size_t i = 0; i < 3; ++i)
                iss->tenant_claims[i] = xstrdup(c, defaults[i]);
        }
    }

    iss->clock_skew_s = 60;
    if (get_int(c, map, kp, "clock_skew_s", 0, 3600, &v) == 1)
        iss->clock_skew_s = (unsigned)v;
    iss->max_token_lifetime_s = 86400;
    if (get_int(c, map, kp, "max_token_lifetime_s", 1, 31536000, &v) == 1)
        iss->max_token_lifetime_s = (uint64_t)v;
    iss->jwks_refetch_cooldown_s = 30;
    if (get_int(c, map, kp, "jwks_refetch_cooldown_s", 0, 86400, &v) == 1)
        iss->jwks_refetch_cooldown_s = (unsigned)v;

    int secret = lookup(c, map, "secret_env") != NULL || lookup(c, map, "secret_file") != NULL;
    if (get_str_list(c, map, kp, "algorithms", check_jwt_alg, &iss->algorithms, &iss->num_algorithms) == 1) {
        yaml_node_t *algs = lookup(c, map, "algorithms");
        for (size_t i = 0; i < iss->num_algorithms; ++i) {
            int hs = strncmp(iss->algorithms[i], "HS", 2) == 0;
            yaml_node_t *at = algs;
            const char *where = kp_join(buf, kp, "algorithms");
            if (algs->type == YAML_SEQUENCE_NODE) {
                where = kp_index(ckp, buf, i);
                at = seq_item(c, algs, i);
            }
            if (hs && !secret)
                problem(c, at, "%s: %s needs a shared secret (secret_env), this issuer publishes public keys", where,
                        iss->algorithms[i]);
            else if (!hs && secret)
                problem(c, at, "%s: %s needs public keys, this issuer has a shared secret (only HS256, HS384, HS512)", where,
                        iss->algorithms[i]);
        }
    } else if (iss->algorithms == NULL && secret) {
        static const char *const hs[] = {"HS256", "HS384", "HS512"};
        if ((iss->algorithms = xcalloc(c, 3, sizeof(char *))) != NULL) {
            iss->num_algorithms = 3;
            for (size_t i = 0; i < 3; ++i)
                iss->algorithms[i] = xstrdup(c, hs[i]);
        }
    }
}

static void parse_static_key(struct ctx *c, yaml_node_t *map, const char *kp, struct aor_static_key_conf *k)
{
    char buf[KP_MAX], *hex = NULL;

    if (req_str(c, map, kp, "sha256", &hex) == 1) {
        size_t len = strlen(hex);
        if (len == 64 && strspn(hex, "0123456789abcdefABCDEF") == 64) {
            for (size_t i = 0; i < 64; ++i)
                k->sha256[i] = (char)(hex[i] | 0x20); /* lower-cases A-F, keeps digits */
            k->sha256[64] = '\0';
        } else {
            /* never echo it: someone may have pasted the key itself here */
            problem(c, lookup(c, map, "sha256"), "%s: expected 64 hexadecimal characters (the SHA-256 of the key)",
                    kp_join(buf, kp, "sha256"));
        }
        free_secret(hex);
    }
    if (get_checked_str(c, map, kp, "tenant", check_tenant_name, &k->tenant) == 0)
        missing(c, map, kp, "tenant");
}

static void parse_keys(struct ctx *c, yaml_node_t *map)
{
    struct aor_config *conf = c->conf;
    yaml_node_t *seq;
    char kp[KP_MAX];
    size_t n;

    check_known_keys(c, map, "auth.keys", auth_keys_keys, 1);
    get_str_list(c, map, "auth.keys", "headers", check_header_name, &conf->auth.key_headers, &conf->auth.num_key_headers);
    if (get_seq(c, map, "auth.keys", "static", &seq) != 1 || (n = seq_len(seq)) == 0)
        return;
    if (n > MAX_STATIC_KEYS) {
        problem(c, seq, "auth.keys.static: at most %d keys (keep the others in Redis)", MAX_STATIC_KEYS);
        return;
    }
    if ((conf->auth.static_keys = xcalloc(c, n, sizeof(*conf->auth.static_keys))) == NULL)
        return;
    conf->auth.num_static_keys = n;
    for (size_t i = 0; i < n; ++i) {
        yaml_node_t *item = seq_item(c, seq, i);
        struct aor_static_key_conf *k = &conf->auth.static_keys[i];
        kp_index(kp, "auth.keys.static", i);
        if (!check_map(c, item, kp))
            continue;
        check_known_keys(c, item, kp, static_key_keys, 1);
        parse_static_key(c, item, kp, k);
        for (size_t j = 0; k->sha256[0] != '\0' && j < i; ++j) {
            if (strcmp(conf->auth.static_keys[j].sha256, k->sha256) == 0) {
                problem(c, item, "%s.sha256: duplicate key (also auth.keys.static[%zu])", kp, j);
                break;
            }
        }
    }
}

static void parse_auth(struct ctx *c, yaml_node_t *top)
{
    static const char *const modes[] = {"jwt", "key", "jwt_or_key", "jwt_and_key", "none", NULL};
    static const char *const booleans[] = {"false", "true", NULL};
    struct aor_config *conf = c->conf;
    yaml_node_t *map, *seq = NULL, *keys;
    char kp[KP_MAX];
    int mode = -1, rc, same = 0;

    if (get_map(c, top, "", "auth", &map) == 1) {
        check_known_keys(c, map, "auth", auth_keys, 1);
        if ((rc = get_enum(c, map, "auth", "mode", modes, &mode)) == 1) {
            if (strcmp(modes[mode], "none") == 0) {
                conf->auth.mode = AOR_AUTH_NONE;
                conf->auth.open_on_purpose = 1;
                warning(c, lookup(c, map, "mode"),
                        "auth.mode: none: clients are not authenticated; every request is tenant \"default\" and spends the "
                        "backends' credentials");
            } else {
                conf->auth.mode = (enum aor_auth_mode)(AOR_AUTH_JWT + mode);
            }
        } else if (rc == 0) {
            missing(c, map, "auth", "mode");
        }
        if (get_enum(c, map, "auth", "same_tenant", booleans, &same) == 1)
            conf->auth.same_tenant = same;

        if (get_seq(c, map, "auth", "jwt", &seq) == 1 && seq_len(seq) != 0) {
            size_t n = seq_len(seq);
            if (n > MAX_JWT_ISSUERS) {
                problem(c, seq, "auth.jwt: at most %d issuers", MAX_JWT_ISSUERS);
            } else if ((conf->auth.jwt = xcalloc(c, n, sizeof(*conf->auth.jwt))) != NULL) {
                conf->auth.num_jwt = n;
                for (size_t i = 0; i < n; ++i) {
                    yaml_node_t *item = seq_item(c, seq, i);
                    struct aor_jwt_issuer_conf *iss = &conf->auth.jwt[i];
                    kp_index(kp, "auth.jwt", i);
                    if (!check_map(c, item, kp))
                        continue;
                    parse_issuer(c, item, kp, iss);
                    for (size_t j = 0; iss->issuer != NULL && j < i; ++j) {
                        if (conf->auth.jwt[j].issuer != NULL && strcmp(conf->auth.jwt[j].issuer, iss->issuer) == 0) {
                            problem(c, lookup(c, item, "issuer"), "%s.issuer: duplicate issuer \"%s\" (also auth.jwt[%zu])", kp,
                                    iss->issuer, j);
                            break;
                        }
                    }
                }
            }
        }
        if ((seq == NULL || seq_len(seq) == 0) && mode >= 0 && conf->auth.mode != AOR_AUTH_KEY && conf->auth.mode != AOR_AUTH_NONE)
            problem(c, seq != NULL ? seq : map, "auth.jwt: mode %s needs at least one issuer", modes[mode]);

        if (get_map(c, map, "auth", "keys", &keys) == 1)
            parse_keys(c, keys);
        scan_inline_secrets(c, map, "auth", 0);
    }
    if (conf->auth.key_headers == NULL) {
        static const char *const defaults[] = {"api-key", "Ocp-Apim-Subscription-Key"};
        if ((conf->auth.key_headers = xcalloc(c, 2, sizeof(char *))) != NULL) {
            conf->auth.num_key_headers = 2;
            for (size_t i = 0; i < 2; ++i)
                conf->auth.key_headers[i] = xstrdup(c, defaults[i]);
        }
    }
}

/* a field a tenants.<T> entry leaves out is tenants.default's (issue 8: absent fields fall back to
 * the default), so every reader of the config sees the effective values */
static void inherit_default(struct ctx *c)
{
    struct aor_config *conf = c->conf;
    const struct aor_tenant_conf *d = NULL;

    for (size_t i = 0; i < conf->num_tenants; ++i) {
        conf->tenants[i].named = conf->tenants[i].set;
        if (strcmp(conf->tenants[i].name, "default") == 0)
            d = &conf->tenants[i];
    }
    if (d == NULL)
        return;
    for (size_t i = 0; i < conf->num_tenants; ++i) {
        struct aor_tenant_conf *t = &conf->tenants[i];
        if (t == d)
            continue;
        t->named |= d->set;
        if (!(t->set & 32))
            t->default_max_tokens = d->default_max_tokens;
        if (!(t->set & 1))
            t->tpm = d->tpm;
        if (!(t->set & 2))
            t->rpm = d->rpm;
        if (!(t->set & 4))
            t->tokens_per_day = d->tokens_per_day;
        if (!(t->set & 8))
            t->tokens_per_month = d->tokens_per_month;
        if (t->deployments == NULL && d->deployments != NULL &&
            (t->deployments = xcalloc(c, d->num_deployments, sizeof(*t->deployments))) != NULL) {
            for (size_t j = 0; j < d->num_deployments; ++j)
                t->deployments[j] = xstrdup(c, d->deployments[j]);
            t->num_deployments = d->num_deployments;
        }
    }
}

static void parse_tenants(struct ctx *c, yaml_node_t *top)
{
    struct aor_config *conf = c->conf;
    yaml_node_t *map;
    char kp[KP_MAX];
    int64_t v;
    size_t *lines = NULL;

    if (get_map(c, top, "", "tenants", &map) != 1 || map_len(map) == 0)
        return;
    if ((conf->tenants = xcalloc(c, map_len(map), sizeof(*conf->tenants))) == NULL ||
        (lines = xcalloc(c, map_len(map), sizeof(*lines))) == NULL)
        return;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; ++p) {
        yaml_node_t *k = node_at(c, p->key), *val = node_at(c, p->value);
        struct aor_tenant_conf *t = &conf->tenants[conf->num_tenants];
        const char *bad;
        if (!is_scalar(k) || is_merge_key(k)) /* reported by check_map */
            continue;
        kp_key(kp, "tenants", sval(k), slen(k));
        if (node_str(c, k, kp, &t->name) < 0)
            continue;
        lines[conf->num_tenants++] = line_of(k);
        t->tpm = t->rpm = t->tokens_per_day = t->tokens_per_month = -1;
        if ((bad = check_tenant_name(t->name, strlen(t->name))) != NULL)
            problem(c, k, "%s: tenant name %s", kp, bad);
        if (is_null(val) || !check_map(c, val, kp))
            continue;
        check_known_keys(c, val, kp, tenant_keys, 0);
        if (get_int(c, val, kp, "tpm", -1, INT64_MAX, &v) == 1)
            t->tpm = v, t->set |= 1;
        if (get_int(c, val, kp, "rpm", -1, INT64_MAX, &v) == 1)
            t->rpm = v, t->set |= 2;
        if (get_int(c, val, kp, "tokens_per_day", -1, INT64_MAX, &v) == 1)
            t->tokens_per_day = v, t->set |= 4;
        if (get_int(c, val, kp, "tokens_per_month", -1, INT64_MAX, &v) == 1)
            t->tokens_per_month = v, t->set |= 8;
        if (get_int(c, val, kp, "default_max_tokens", 0, AOR_TENANT_MAX_DEFAULT_MAX_TOKENS, &v) == 1)
            t->default_max_tokens = v, t->set |= 32;
        if (get_str_list(c, val, kp, "deployments", check_deployment_name, &t->deployments, &t->num_deployments) == 1)
            t->set |= 16;
    }
    inherit_default(c);
    /* the estimate of a request without a completion limit is at least default_max_tokens, and an
     * estimate over the tpm is never admitted: the tenant's such requests would all be 429 */
    for (size_t i = 0; i < conf->num_tenants; ++i) {
        const struct aor_tenant_conf *t = &conf->tenants[i];
        if (t->default_max_tokens > 0 && t->tpm > 0 && t->default_max_tokens >= t->tpm)
            warning_at(c, lines[i],
                       "tenants.%s: default_max_tokens %lld is not below its tpm %lld: every request of the tenant without a "
                       "completion limit is refused 429 (unless its Redis hash gives it a larger tpm)",
                       t->name, (long long)t->default_max_tokens, (long long)t->tpm);
    }
    free(lines);
}

/* `tenant_id` / `client_id` / `token_file` of workload identity, each defaulting to what the AKS webhook injects */
static int str_or_env(struct ctx *c, yaml_node_t *map, const char *kp, const char *key, const char *env, char **out)
{
    char buf[KP_MAX];
    int rc = get_str(c, map, kp, key, out);
    const char *v;

    if (rc != 0)
        return rc;
    if ((v = getenv(env)) != NULL && *v != '\0') {
        for (const char *p = v; *p != '\0'; ++p)
            if ((unsigned char)*p < 0x20 || *p == 0x7f) { /* `export X=$(cat f)` keeps none, a Secret from a file may */
                problem(c, map, "%s: %s has a control character (a trailing newline?)", kp_join(buf, kp, key), env);
                return -1;
            }
        return (*out = xstrdup(c, v)) != NULL ? 1 : -1;
    }
    if (skip_secrets(c, kp)) /* a default the platform injects at run time */
        return (*out = xstrdup(c, strcmp(key, "tenant_id") == 0 ? "00000000-0000-0000-0000-000000000000" : shape_placeholder)) !=
                       NULL
                   ? 1
                   : -1;
    problem(c, map, "%s: missing required key (and %s is not set)", kp_join(buf, kp, key), env);
    return -1;
}

static void parse_authority(struct ctx *c, yaml_node_t *map, const char *kp, struct aor_cred_conf *cred)
{
    char buf[KP_MAX];
    const char *env, *bad;
    int rc = get_endpoint_url(c, map, kp, "authority_host", &cred->authority_host);

    if (rc < 0)
        return;
    if (rc == 0) {
        if ((env = getenv("AZURE_AUTHORITY_HOST")) == NULL || *env == '\0') {
            env = DEFAULT_AUTHORITY;
        } else if ((bad = url_problem(env)) != NULL) {
            problem(c, map, "%s: AZURE_AUTHORITY_HOST %s", kp_join(buf, kp, "authority_host"), bad);
            return;
        } else {
            char where[KP_MAX + 40]; /* the secret or the assertion goes there, like to a configured authority_host */
            snprintf(where, sizeof(where), "%s (AZURE_AUTHORITY_HOST)", kp_join(buf, kp, "authority_host"));
            warn_plain_http(c, map, where, env, 0);
        }
        if ((cred->authority_host = xstrdup(c, env)) == NULL)
            return;
    }
    /* exactly one trailing '/', so "<authority_host><tenant>/oauth2/v2.0/token" is right */
    size_t len = strlen(cred->authority_host);
    while (len > 0 && cred->authority_host[len - 1] == '/')
        --len;
    char *s = malloc(len + 2);
    if (s == NULL) {
        oom(c);
        return;
    }
    memcpy(s, cred->authority_host, len);
    memcpy(s + len, "/", 2);
    free(cred->authority_host);
    cred->authority_host = s;
}

static void parse_resource(struct ctx *c, yaml_node_t *map, const char *kp, struct aor_cred_conf *cred)
{
    if (get_str(c, map, kp, "resource", &cred->resource) == 0)
        cred->resource = xstrdup(c, DEFAULT_RESOURCE);
}

static void parse_managed_identity(struct ctx *c, yaml_node_t *map, const char *kp, struct aor_cred_conf *cred)
{
    const char *ep = getenv("IDENTITY_ENDPOINT"), *hdr = getenv("IDENTITY_HEADER");

    get_str(c, map, kp, "client_id", &cred->client_id);
    if (get_endpoint_url(c, map, kp, "imds_endpoint", &cred->imds_endpoint) != 0)
        return;
    cred->imds_endpoint = xstrdup(c, DEFAULT_IMDS);
    /* App Service, Container Apps, Functions: their local identity endpoint instead of IMDS (as Azure's SDKs do) */
    if (ep != NULL && *ep != '\0' && hdr != NULL && *hdr != '\0') {
        const char *bad = url_problem(ep);
        char buf[KP_MAX];
        if (bad != NULL) {
            problem(c, map, "%s: IDENTITY_ENDPOINT %s", kp_join(buf, kp, "imds_endpoint"), bad);
            return;
        }
        for (const char *h = hdr; *h != '\0'; ++h)
            if ((unsigned char)*h < 0x21 || (unsigned char)*h > 0x7e) {
                problem(c, map, "%s: IDENTITY_HEADER has bytes that cannot go in an HTTP header",
                        kp_join(buf, kp, "imds_endpoint"));
                return;
            }
        /* X-IDENTITY-HEADER goes there: in the clear only to loopback or link-local (where Azure puts it) */
        char where[KP_MAX + 40];
        snprintf(where, sizeof(where), "%s (IDENTITY_ENDPOINT)", kp_join(buf, kp, "imds_endpoint"));
        warn_plain_http(c, map, where, ep, 1);
        cred->identity_endpoint = xstrdup(c, ep);
        cred->identity_header = xstrdup(c, hdr);
    }
}

static void parse_workload_identity(struct ctx *c, yaml_node_t *map, const char *kp, struct aor_cred_conf *cred)
{
    char buf[KP_MAX];
    const char *bad;

    if (str_or_env(c, map, kp, "tenant_id", "AZURE_TENANT_ID", &cred->tenant_id) == 1 &&
        (bad = check_entra_tenant(cred->tenant_id, strlen(cred->tenant_id))) != NULL)
        problem(c, lookup(c, map, "tenant_id") ? lookup(c, map, "tenant_id") : map, "%s: %s", kp_join(buf, kp, "tenant_id"), bad);
    str_or_env(c, map, kp, "client_id", "AZURE_CLIENT_ID", &cred->client_id);
    if (str_or_env(c, map, kp, "token_file", "AZURE_FEDERATED_TOKEN_FILE", &cred->token_file) == 1) {
        yaml_node_t *at = lookup(c, map, "token_file");
        char where[KP_MAX + 40];
        snprintf(where, sizeof(where), "%s%s", kp_join(buf, kp, "token_file"), at != NULL ? "" : " (AZURE_FEDERATED_TOKEN_FILE)");
        warn_unreadable(c, at != NULL ? at : map, where, cred->token_file);
    }
    parse_authority(c, map, kp, cred);
}

static void parse_client_secret(struct ctx *c, yaml_node_t *map, const char *kp, struct aor_cred_conf *cred)
{
    if (get_checked_str(c, map, kp, "tenant_id", check_entra_tenant, &cred->tenant_id) == 0)
        missing(c, map, kp, "tenant_id");
    req_str(c, map, kp, "client_id", &cred->client_id);
    if (get_secret(c, map, kp, "secret_env", "secret_file", SECRET_BYTES, &cred->secret) == 0)
        problem(c, map, "%s: needs exactly one of secret_env or secret_file", kp);
    parse_authority(c, map, kp, cred);
}

/* the AUTH user name: an object (principal) id is a GUID; anything else that fits in one RESP argument sanely */
static const char *check_object_id(const char *s, size_t len)
{
    if (len == 0 || len > 128)
        return "must be 1 to 128 characters (the identity's object id)";
    for (size_t i = 0; i < len; ++i)
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
            return "must be visible ASCII without spaces (the identity's object id)";
    return NULL;
}

/*
 * redis.auth.resource: what IMDS gets as resource= and Entra's v2.0 endpoint as <resource>/.default.
 * The scope itself (…/.default, copied from Azure's docs) would be asked as …/.default/.default and
 * fail only at run time; a space or control byte is a typo. Named here, never cut or cleaned.
 */
static const char *check_token_resource(const char *s, size_t len)
{
    size_t n = len;

    if (len == 0 || len > 256)
        return "must be 1 to 256 characters (e.g. https://redis.azure.com)";
    for (size_t i = 0; i < len; ++i)
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
            return "must be visible ASCII without spaces (e.g. https://redis.azure.com)";
    if (n > 0 && s[n - 1] == '/')
        --n;
    if (n >= 9 && memcmp(s + n - 9, "/.default", 9) == 0)
        return "is a scope (.../.default), not a resource: give the resource, e.g. https://redis.azure.com (the router asks for "
               "<resource>/.default itself)";
    return NULL;
}

/*
 * redis.auth: keyless Entra ID auth to Azure Cache for Redis / Azure Managed Redis. The same credential
 * types and fields as a backend's (managed_identity, workload_identity, client_secret), for the resource
 * https://redis.azure.com, plus object_id: the router sends AUTH <object_id> <access token>.
 */
static void parse_redis_auth(struct ctx *c, yaml_node_t *auth)
{
    static const char *const types[] = {"managed_identity", "workload_identity", "client_secret", NULL};
    static const char *const *const keys[] = {redis_mi_keys, redis_wi_keys, redis_secret_keys};
    struct aor_cred_conf *cred = &c->conf->redis.cred;
    const char *kp = "redis.auth";
    int type, rc;

    if ((rc = get_enum(c, auth, kp, "type", types, &type)) != 1) {
        if (rc == 0)
            missing(c, auth, kp, "type");
        check_known_keys(c, auth, kp, redis_auth_keys, 1);
        return;
    }
    check_known_keys(c, auth, kp, keys[type], 1);
    cred->type = (enum aor_cred_type)(AOR_CRED_MANAGED_IDENTITY + type);
    if (get_checked_str(c, auth, kp, "object_id", check_object_id, &c->conf->redis.object_id) == 0)
        missing(c, auth, kp, "object_id");
    switch (cred->type) {
    case AOR_CRED_MANAGED_IDENTITY:
        parse_managed_identity(c, auth, kp, cred);
        break;
    case AOR_CRED_WORKLOAD_IDENTITY:
        parse_workload_identity(c, auth, kp, cred);
        break;
    default:
        parse_client_secret(c, auth, kp, cred);
        break;
    }
    if (get_checked_str(c, auth, kp, "resource", check_token_resource, &cred->resource) == 0)
        cred->resource = xstrdup(c, DEFAULT_REDIS_RESOURCE);
}

/* backends[].auth.type, in the order of enum aor_cred_type from AOR_CRED_API_KEY */
static const char *const cred_type_names[] = {
    "api_key", "managed_identity", "workload_identity", "client_secret", "oidc_federation", "openai_wif", NULL};

static void parse_cred(struct ctx *c, yaml_node_t *map, const char *kp, struct aor_cred_conf *cred)
{
    static const char *const *const types = cred_type_names;
    static const char *const subject_types[] = {"managed_identity", "workload_identity", "file", NULL};
    char skp[KP_MAX];
    yaml_node_t *subject;
    int type, rc;

    if ((rc = get_enum(c, map, kp, "type", types, &type)) != 1) {
        if (rc == 0)
            missing(c, map, kp, "type");
        return;
    }
    cred->type = (enum aor_cred_type)(AOR_CRED_API_KEY + type);
    if (cred->type != AOR_CRED_OPENAI_WIF) {
        static const char *const *const by_type[] = {cred_api_key_keys, cred_mi_keys, cred_wi_keys, cred_secret_keys,
                                                     cred_federation_keys};
        check_known_keys(c, map, kp, by_type[type], 1);
    }
    switch (cred->type) {
    case AOR_CRED_API_KEY:
        if (get_secret(c, map, kp, "key_env", "key_file", SECRET_TOKEN, &cred->api_key) == 0)
            problem(c, map, "%s: needs exactly one of key_env or key_file", kp);
        break;
    case AOR_CRED_MANAGED_IDENTITY:
        parse_managed_identity(c, map, kp, cred);
        parse_resource(c, map, kp, cred);
        break;
    case AOR_CRED_WORKLOAD_IDENTITY:
        parse_workload_identity(c, map, kp, cred);
        parse_resource(c, map, kp, cred);
        break;
    case AOR_CRED_CLIENT_SECRET:
        parse_client_secret(c, map, kp, cred);
        parse_resource(c, map, kp, cred);
        break;
    case AOR_CRED_OIDC_FEDERATION:
        if (get_endpoint_url(c, map, kp, "token_url", &cred->token_url) == 0)
            missing(c, map, kp, "token_url");
        req_str(c, map, kp, "client_id", &cred->client_id);
        if (get_secret(c, map, kp, "client_secret_env", "client_secret_file", SECRET_BYTES, &cred->client_secret) == 0)
            problem(c, map, "%s: needs exactly one of client_secret_env or client_secret_file", kp);
        if (get_checked_str(c, map, kp, "tenant_id", check_entra_tenant, &cred->tenant_id) == 0)
            missing(c, map, kp, "tenant_id");
        req_str(c, map, kp, "azure_client_id", &cred->azure_client_id);
        if (get_str(c, map, kp, "audience", &cred->audience) == 0)
            cred->audience = xstrdup(c, DEFAULT_FEDERATION_AUDIENCE);
        parse_authority(c, map, kp, cred);
        parse_resource(c, map, kp, cred);
        break;
    case AOR_CRED_OPENAI_WIF:
        req_str(c, map, kp, "identity_provider_id", &cred->identity_provider_id);
        req_str(c, map, kp, "service_account_id", &cred->service_account_id);
        get_endpoint_url(c, map, kp, "token_url", &cred->token_url);
        if ((rc = get_map(c, map, kp, "subject", &subject)) == 0) {
            missing(c, map, kp, "subject");
        } else if (rc == 1) {
            kp_join(skp, kp, "subject");
            check_known_keys(c, subject, skp, subject_keys, 1);
            if ((rc = get_enum(c, subject, skp, "type", subject_types, &type)) == 0)
                missing(c, subject, skp, "type");
            /* the credential's other keys are those of the subject's type */
            if (rc == 1)
                check_known_keys(c, map, kp,
                                 type == 0   ? cred_openai_mi_keys
                                 : type == 1 ? cred_openai_wi_keys
                                             : cred_openai_file_keys,
                                 1);
            if (rc == 1 && type != 2)
                req_str(c, subject, skp, "resource", &cred->subject_resource);
            if (rc == 1 && (cred->subject_type = xstrdup(c, subject_types[type])) != NULL) {
                if (type == 0)
                    parse_managed_identity(c, map, kp, cred);
                else if (type == 1)
                    parse_workload_identity(c, map, kp, cred);
                else
                    req_str(c, subject, skp, "path", &cred->token_file); /* re-read at each refresh */
            }
        }
        break;
    case AOR_CRED_NONE:
        break;
    }
}

static void parse_deployments(struct ctx *c, yaml_node_t *map, const char *kp, struct aor_backend_conf *b)
{
    char buf[KP_MAX];
    const char *bad;

    if (map_len(map) == 0) {
        problem(c, map, "%s: must not be empty (omit it to serve every deployment under its own name)", kp);
        return;
    }
    if ((b->deployments = xcalloc(c, map_len(map), sizeof(*b->deployments))) == NULL)
        return;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; ++p) {
        yaml_node_t *k = node_at(c, p->key), *v = node_at(c, p->value);
        struct aor_deployment_map *d = &b->deployments[b->num_deployments];
        if (!is_scalar(k) || is_merge_key(k)) /* reported by check_map */
            continue;
        kp_key(buf, kp, sval(k), slen(k));
        if (node_str(c, k, buf, &d->logical) < 0)
            continue;
        ++b->num_deployments;
        if ((bad = check_deployment_name(d->logical, strlen(d->logical))) != NULL)
            problem(c, k, "%s: deployment name %s", buf, bad);
        if (node_str(c, v, buf, &d->upstream) == 1 && (bad = check_deployment_name(d->upstream, strlen(d->upstream))) != NULL)
            problem(c, v, "%s: %s", buf, bad);
    }
}

static void parse_backend(struct ctx *c, yaml_node_t *map, const char *kp, struct aor_backend_conf *b)
{
    static const char *const providers[] = {"azure", "openai", NULL};
    char akp[KP_MAX];
    yaml_node_t *sub;
    int provider = 0, rc;
    int64_t v;

    b->line = (int)line_of(map);
    check_known_keys(c, map, kp, backend_keys, 0);
    if (get_checked_str(c, map, kp, "name", check_backend_name, &b->name) == 0)
        missing(c, map, kp, "name");
    if (get_enum(c, map, kp, "provider", providers, &provider) == 1)
        b->provider = (enum aor_provider)provider;
    if ((rc = get_url(c, map, kp, "url", &b->url)) == 0) {
        if (b->provider == AOR_PROVIDER_OPENAI)
            b->url = xstrdup(c, DEFAULT_OPENAI_URL);
        else
            missing(c, map, kp, "url");
    }
    if (b->url != NULL) {
        size_t len = strlen(b->url);
        while (len > 0 && b->url[len - 1] == '/')
            b->url[--len] = '\0';
        /* the router builds the whole path itself: a portal-copied ".../openai/deployments/gpt-4o" would be doubled */
        const char *authority = strstr(b->url, "://") + 3, *rest = authority + strcspn(authority, "/?#");
        if (*rest != '\0')
            problem(c, lookup(c, map, "url"),
                    "%s.url: give only scheme://host[:port], without a path, query or fragment (the router adds %s itself)", kp,
                    b->provider == AOR_PROVIDER_OPENAI ? "/v1/..." : "/openai/deployments/<name>/... and /openai/v1/...");
        else if (memchr(authority, '@', (size_t)(rest - authority)) != NULL)
            problem(c, lookup(c, map, "url"), "%s.url: must not carry user:password@ (secrets come from auth: key_env or key_file)",
                    kp);
    }
    get_str(c, map, kp, "region", &b->region);
    b->priority = 1;
    if (get_int(c, map, kp, "priority", 0, INT_MAX, &v) == 1)
        b->priority = (int)v;
    b->weight = 1;
    if (get_int(c, map, kp, "weight", 1, 1000, &v) == 1)
        b->weight = (unsigned)v;
    if (get_int(c, map, kp, "tpm", 0, MAX_BACKEND_TPM, &v) == 1)
        b->tpm = (uint64_t)v;
    if (get_map(c, map, kp, "deployments", &sub) == 1)
        parse_deployments(c, sub, kp_join(akp, kp, "deployments"), b);
    if (get_map(c, map, kp, "auth", &sub) == 1) {
        unsigned problems_before = c->problems;
        kp_join(akp, kp, "auth");
        parse_cred(c, sub, akp, &b->cred);
        scan_inline_secrets(c, sub, akp, 0);
        /* an Entra token is never sent to OpenAI, nor OpenAI's to Azure: such a backend gets no token
         * source. Said about a credential that is otherwise well-formed */
        enum aor_cred_type t = b->cred.type;
        if (c->problems == problems_before &&
            (t == AOR_CRED_MANAGED_IDENTITY || t == AOR_CRED_WORKLOAD_IDENTITY || t == AOR_CRED_CLIENT_SECRET ||
             t == AOR_CRED_OIDC_FEDERATION || t == AOR_CRED_OPENAI_WIF)) {
            int openai_type = t == AOR_CRED_OPENAI_WIF;
            char tkp[KP_MAX];
            if (openai_type != (b->provider == AOR_PROVIDER_OPENAI))
                warning(c, lookup(c, sub, "type"),
                        "%s: %s on a backend with provider %s never gets a token: the backend is always skipped (use %s)",
                        kp_join(tkp, akp, "type"), cred_type_names[t - AOR_CRED_API_KEY], openai_type ? "azure" : "openai",
                        openai_type ? "an Entra ID type or api_key, or provider: openai"
                                    : "openai_wif or api_key, or provider: azure");
        }
    }
}

static void parse_backends(struct ctx *c, yaml_node_t *top)
{
    struct aor_config *conf = c->conf;
    yaml_node_t *seq;
    char kp[KP_MAX];
    size_t n;
    int rc = get_seq(c, top, "", "backends", &seq);

    if (rc == 0)
        missing(c, top, "", "backends");
    if (rc != 1)
        return;
    if ((n = seq_len(seq)) == 0 || n > MAX_BACKENDS) {
        problem(c, seq, n == 0 ? "backends: must not be empty" : "backends: at most %d backends", MAX_BACKENDS);
        return;
    }
    if ((conf->backends = xcalloc(c, n, sizeof(*conf->backends))) == NULL)
        return;
    conf->num_backends = n;
    for (size_t i = 0; i < n; ++i) {
        struct aor_backend_conf *b = &conf->backends[i];
        yaml_node_t *item = seq_item(c, seq, i);
        kp_index(kp, "backends", i);
        b->line = (int)line_of(item);
        if (!check_map(c, item, kp))
            continue;
        parse_backend(c, item, kp, b);
        for (size_t j = 0; b->name != NULL && j < i; ++j) {
            if (conf->backends[j].name != NULL && strcmp(conf->backends[j].name, b->name) == 0) {
                problem(c, lookup(c, item, "name"), "%s.name: duplicate backend name \"%s\" (also backends[%zu])", kp, b->name, j);
                break;
            }
        }
    }
}

static void free_strv(char **v, size_t n);

/* "METHOD /path" or "METHOD /prefix*": an operation forwarded besides the inference ones */
static const char *check_passthrough(const char *s, size_t len)
{
    const char *sp = memchr(s, ' ', len);
    size_t mlen = sp != NULL ? (size_t)(sp - s) : 0;

    if (mlen == 0 || mlen > 15)
        return "expected \"METHOD /path\" (e.g. \"GET /openai/models\")";
    for (size_t i = 0; i < mlen; ++i)
        if (s[i] < 'A' || s[i] > 'Z')
            return "the method must be upper-case letters (GET, POST, DELETE, ...)";
    if (sp[1] != '/')
        return "the path must start with '/'";
    for (const char *p = sp + 1; p < s + len; ++p) {
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f || *p == '?' || *p == '#')
            return "the path must be visible ASCII without spaces, '?' or '#'";
        if (*p == '*' && p + 1 != s + len)
            return "'*' may only end the path (a prefix match)";
    }
    return NULL;
}

static void parse_passthrough(struct ctx *c, yaml_node_t *top)
{
    struct aor_config *conf = c->conf;
    char **items = NULL;
    size_t n = 0;

    if (get_str_list(c, top, "", "passthrough", check_passthrough, &items, &n) != 1 || n == 0)
        return;
    if ((conf->passthrough = xcalloc(c, n, sizeof(*conf->passthrough))) != NULL) {
        for (size_t i = 0; i < n; ++i) {
            struct aor_passthrough_conf *pt = &conf->passthrough[i];
            char *sp = strchr(items[i], ' ');
            size_t plen = strlen(sp + 1);
            pt->method = xstrndup(c, items[i], (size_t)(sp - items[i]));
            pt->prefix = plen != 0 && sp[plen] == '*';
            pt->path_len = plen - (pt->prefix ? 1 : 0);
            pt->path = xstrndup(c, sp + 1, pt->path_len);
        }
        conf->num_passthrough = n;
    }
    free_strv(items, n);
}

static void parse_threads(struct ctx *c, yaml_node_t *top)
{
    int64_t v = 0;

    get_int(c, top, "", "threads", 0, MAX_THREADS, &v);
    if (v == 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        v = cores < 1 ? 1 : cores > MAX_THREADS ? MAX_THREADS : cores;
    }
    c->conf->threads = (unsigned)v;
}

/* SPEC §3: without auth: every client is tenant "default" — only when nobody but this host can connect */
static void check_auth_omitted(struct ctx *c, yaml_node_t *root)
{
    static const char *const fix = "without auth: every client is served as tenant \"default\" with the backends' credentials; "
                                   "add an auth: section, or auth: { mode: none } to run open on purpose";
    const struct aor_config *conf = c->conf;
    yaml_node_t *auth = lookup(c, root, "auth");
    char ep[80];

    if (auth != NULL && !is_null(auth))
        return;
    for (size_t i = 0; i < conf->num_listeners; ++i) {
        const struct aor_listen_conf *l = &conf->listeners[i];
        if (l->address != NULL && !is_loopback_ip(l->address)) {
            format_endpoint(ep, sizeof(ep), l->address, l->port);
            problem_at(c, (size_t)l->line, "auth: missing: listen[%zu] (%s) is not loopback; %s", i, ep, fix);
            return;
        }
    }
    if (conf->metrics.enabled && conf->metrics.address != NULL && !is_loopback_ip(conf->metrics.address)) {
        format_endpoint(ep, sizeof(ep), conf->metrics.address, conf->metrics.port);
        problem(c, lookup(c, root, "metrics"), "auth: missing: metrics (%s) is not loopback; %s", ep, fix);
    }
}

static void parse_root(struct ctx *c, yaml_node_t *root)
{
    if (!check_map(c, root, ""))
        return;
    check_known_keys(c, root, "", root_keys, 0);
    parse_listeners(c, root);
    parse_threads(c, root);
    parse_redis(c, root);
    parse_limits(c, root);
    parse_circuit(c, root);
    parse_metrics(c, root);
    parse_auth(c, root);
    check_auth_omitted(c, root);
    parse_passthrough(c, root);
    parse_tenants(c, root);
    parse_backends(c, root);
}

/* ---- YAML passes -------------------------------------------------------------------------------------------------- */

static void syntax_problem(struct ctx *c, const yaml_parser_t *p, const char *text, size_t len)
{
    const char *what = p->problem != NULL ? p->problem : "invalid document";
    size_t line = 1;

    switch (p->error) {
    case YAML_MEMORY_ERROR:
        oom(c);
        return;
    case YAML_READER_ERROR:
        for (size_t i = 0; i < p->problem_offset && i < len; ++i)
            line += text[i] == '\n';
        problem_at(c, line, "YAML syntax error: %s", what);
        return;
    default:
        line = p->problem_mark.line + 1;
        if (p->context != NULL)
            problem_at(c, line, "YAML syntax error: %s (%s at line %zu)", what, p->context, p->context_mark.line + 1);
        else
            problem_at(c, line, "YAML syntax error: %s", what);
        return;
    }
}

struct anchor {
    char *name;
    uint64_t size; /* nodes, aliases expanded */
    int complete;
};

static int add_anchor(struct ctx *c, struct anchor *anchors, size_t *n, const yaml_char_t *name, size_t line, uint64_t size,
                      int complete)
{
    if (*n == MAX_ANCHORS) {
        problem_at(c, line, "more than %d YAML anchors", MAX_ANCHORS);
        return -1;
    }
    if ((anchors[*n].name = xstrdup(c, (const char *)name)) == NULL)
        return -1;
    anchors[*n].size = size;
    anchors[*n].complete = complete;
    return (int)(*n)++;
}

/*
 * First pass, over events: refuses what would make the node tree or the walk expensive
 * before libyaml builds it. 0 = fine, -1 = problem reported.
 */
static int prescan(struct ctx *c, const char *text, size_t len)
{
    struct anchor anchors[MAX_ANCHORS];
    uint64_t sizes[MAX_DEPTH];
    int open_anchor[MAX_DEPTH];
    size_t n_anchors = 0, depth = 0;
    int docs = 0, rc = -1, done = 0;
    yaml_parser_t parser;
    yaml_event_t ev;

    if (!yaml_parser_initialize(&parser)) {
        oom(c);
        return -1;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    while (!done) {
        uint64_t add = 0;
        size_t line;
        int a;

        if (!yaml_parser_parse(&parser, &ev)) {
            syntax_problem(c, &parser, text, len);
            break;
        }
        line = ev.start_mark.line + 1;
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
            rc = 0;
            done = 1;
            break;
        case YAML_DOCUMENT_START_EVENT:
            if (++docs > 1) {
                problem_at(c, line, "only one YAML document is allowed");
                done = 1;
            }
            break;
        case YAML_SCALAR_EVENT:
            add = 1;
            if (ev.data.scalar.anchor != NULL && add_anchor(c, anchors, &n_anchors, ev.data.scalar.anchor, line, 1, 1) < 0)
                done = 1;
            break;
        case YAML_ALIAS_EVENT:
            add = 1; /* an undefined alias is reported by the loader */
            for (size_t i = n_anchors; i-- > 0;) {
                if (strcmp(anchors[i].name, (const char *)ev.data.alias.anchor) == 0) {
                    if (!anchors[i].complete) {
                        problem_at(c, line, "alias *%s is used inside its own anchor", anchors[i].name);
                        done = 1;
                    }
                    add = anchors[i].size;
                    break;
                }
            }
            break;
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT: {
            const yaml_char_t *name =
                ev.type == YAML_SEQUENCE_START_EVENT ? ev.data.sequence_start.anchor : ev.data.mapping_start.anchor;
            if (depth == MAX_DEPTH) {
                problem_at(c, line, "YAML nesting deeper than %d levels", MAX_DEPTH);
                done = 1;
                break;
            }
            a = -1;
            if (name != NULL && (a = add_anchor(c, anchors, &n_anchors, name, line, 0, 0)) < 0) {
                done = 1;
                break;
            }
            sizes[depth] = 1;
            open_anchor[depth++] = a;
            break;
        }
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            add = sizes[--depth];
            if (open_anchor[depth] >= 0) {
                anchors[open_anchor[depth]].size = add;
                anchors[open_anchor[depth]].complete = 1;
            }
            break;
        default:
            break;
        }
        if (add != 0 && depth > 0 && !done) {
            sizes[depth - 1] += add; /* no overflow: both are capped at MAX_EXPANDED_NODES */
            if (sizes[depth - 1] > MAX_EXPANDED_NODES) {
                problem_at(c, line, "YAML aliases expand to more than %d nodes", MAX_EXPANDED_NODES);
                done = 1;
            }
        }
        yaml_event_delete(&ev);
    }
    for (size_t i = 0; i < n_anchors; ++i)
        free(anchors[i].name);
    yaml_parser_delete(&parser);
    return rc;
}

static void free_strv(char **v, size_t n)
{
    if (v == NULL)
        return;
    for (size_t i = 0; i < n; ++i)
        free(v[i]);
    free(v);
}

static void free_cred(struct aor_cred_conf *cred)
{
    free_secret(cred->api_key);
    free_secret(cred->secret);
    free_secret(cred->client_secret);
    free(cred->client_id);
    free(cred->tenant_id);
    free(cred->token_file);
    free(cred->imds_endpoint);
    free(cred->authority_host);
    free(cred->token_url);
    free(cred->audience);
    free(cred->azure_client_id);
    free(cred->resource);
    free(cred->identity_provider_id);
    free(cred->service_account_id);
    free(cred->subject_type);
    free(cred->subject_resource);
    free(cred->identity_endpoint);
    free_secret(cred->identity_header);
}

static void free_conf(struct aor_config *conf)
{
    for (size_t i = 0; i < conf->num_listeners; ++i) {
        struct aor_listen_conf *l = &conf->listeners[i];
        free(l->address);
        free(l->tls.cert_file);
        free(l->tls.key_file);
        free(l->tls.client_ca_file);
    }
    free(conf->listeners);
    free(conf->redis.url);
    free(conf->redis.prefix);
    free(conf->redis.ca_file);
    free_secret(conf->redis.password);
    free_cred(&conf->redis.cred);
    free(conf->redis.object_id);
    free(conf->metrics.address);
    for (size_t i = 0; i < conf->auth.num_jwt; ++i) {
        struct aor_jwt_issuer_conf *iss = &conf->auth.jwt[i];
        free(iss->issuer);
        free(iss->openid_config);
        free(iss->jwks_uri);
        free(iss->jwks_file);
        free_secret(iss->secret);
        free_strv(iss->audiences, iss->num_audiences);
        for (size_t j = 0; j < iss->num_required_claims; ++j) {
            free(iss->required_claims[j].claim);
            free_strv(iss->required_claims[j].values, iss->required_claims[j].num_values);
        }
        free(iss->required_claims);
        free_strv(iss->tenant_claims, iss->num_tenant_claims);
        free_strv(iss->algorithms, iss->num_algorithms);
    }
    free(conf->auth.jwt);
    free_strv(conf->auth.key_headers, conf->auth.num_key_headers);
    for (size_t i = 0; i < conf->auth.num_static_keys; ++i)
        free(conf->auth.static_keys[i].tenant);
    free(conf->auth.static_keys);
    for (size_t i = 0; i < conf->num_passthrough; ++i) {
        free(conf->passthrough[i].method);
        free(conf->passthrough[i].path);
    }
    free(conf->passthrough);
    for (size_t i = 0; i < conf->num_tenants; ++i) {
        free(conf->tenants[i].name);
        free_strv(conf->tenants[i].deployments, conf->tenants[i].num_deployments);
    }
    free(conf->tenants);
    for (size_t i = 0; i < conf->num_backends; ++i) {
        struct aor_backend_conf *b = &conf->backends[i];
        free(b->name);
        free(b->url);
        free(b->region);
        for (size_t j = 0; j < b->num_deployments; ++j) {
            free(b->deployments[j].logical);
            free(b->deployments[j].upstream);
        }
        free(b->deployments);
        free_cred(&b->cred);
    }
    free(conf->backends);
    free(conf->keystores);
    free(conf->path);
    free(conf);
}

/* ---- API ---------------------------------------------------------------------------------------------------------- */

static struct aor_config *parse_flags(const char *name, const char *text, size_t len, FILE *errs, unsigned flags)
{
    struct ctx c = {.name = name != NULL ? name : "<config>", .errs = errs, .flags = flags};
    yaml_parser_t parser;
    yaml_document_t doc;
    yaml_node_t *root;

    if (text == NULL)
        text = "", len = 0;
    if (len > MAX_CONFIG_BYTES) {
        problem_at(&c, 1, "larger than %d bytes", MAX_CONFIG_BYTES);
        return NULL;
    }
    if ((c.conf = xcalloc(&c, 1, sizeof(*c.conf))) == NULL)
        return NULL;
    c.conf->refcnt = 1;
    c.conf->path = xstrdup(&c, c.name);
    if (prescan(&c, text, len) == 0) {
        if (!yaml_parser_initialize(&parser)) {
            oom(&c);
        } else {
            yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
            if (!yaml_parser_load(&parser, &doc)) {
                syntax_problem(&c, &parser, text, len);
            } else {
                c.doc = &doc;
                if ((root = yaml_document_get_root_node(&doc)) == NULL)
                    problem_at(&c, 1, "the configuration is empty (listen and backends are required)");
                else
                    parse_root(&c, root);
                yaml_document_delete(&doc);
            }
            yaml_parser_delete(&parser);
        }
    }
    if (c.problems != 0) {
        free_conf(c.conf);
        return NULL;
    }
    return c.conf;
}

struct aor_config *aor_config_parse(const char *name, const char *text, size_t len, FILE *errs)
{
    return parse_flags(name, text, len, errs, 0);
}

struct aor_config *aor_config_load(const char *path, FILE *errs)
{
    return aor_config_load_flags(path, errs, 0);
}

struct aor_config *aor_config_load_flags(const char *path, FILE *errs, unsigned flags)
{
    struct ctx c = {.name = path != NULL ? path : "<config>", .errs = errs};
    struct aor_config *conf;
    char *text = NULL, ebuf[128];
    size_t len = 0;
    int rc;

    if (path == NULL) {
        problem_at(&c, 1, "no configuration file given");
        return NULL;
    }
    if ((rc = read_file(path, MAX_CONFIG_BYTES, &text, &len)) != 0) {
        if (rc == READ_NOT_REGULAR)
            problem_at(&c, 1, "not a regular file");
        else if (rc == READ_TOO_LARGE)
            problem_at(&c, 1, "larger than %d bytes", MAX_CONFIG_BYTES);
        else
            problem_at(&c, 1, "cannot read: %s", errstr(rc, ebuf, sizeof(ebuf)));
        return NULL;
    }
    conf = parse_flags(path, text, len, errs, flags);
    free(text);
    return conf;
}

void aor_config_retain(struct aor_config *conf)
{
    __atomic_add_fetch(&conf->refcnt, 1, __ATOMIC_RELAXED);
}

void aor_config_release(struct aor_config *conf)
{
    if (conf == NULL)
        return;
    /* acq_rel: the last owner must see every other owner's reads done before it frees */
    if (__atomic_sub_fetch(&conf->refcnt, 1, __ATOMIC_ACQ_REL) == 0)
        free_conf(conf);
}

const struct aor_backend_conf *aor_config_find_backend(const struct aor_config *conf, const char *name)
{
    if (conf == NULL || name == NULL)
        return NULL;
    for (size_t i = 0; i < conf->num_backends; ++i)
        if (strcmp(conf->backends[i].name, name) == 0)
            return &conf->backends[i];
    return NULL;
}

const char *aor_config_map_deployment(const struct aor_backend_conf *backend, const char *logical, size_t logical_len)
{
    if (backend == NULL || logical == NULL || logical_len == 0)
        return NULL;
    if (backend->deployments == NULL)
        return aor_config_deployment_unchanged;
    for (size_t i = 0; i < backend->num_deployments; ++i) {
        const struct aor_deployment_map *d = &backend->deployments[i];
        if (strlen(d->logical) == logical_len && memcmp(d->logical, logical, logical_len) == 0)
            return d->upstream;
    }
    return NULL;
}
