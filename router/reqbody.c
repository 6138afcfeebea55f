/* reqbody.c — see reqbody.h */
#include <string.h>
#include "jsonscan.h"
#include "reqbody.h"

#define KEY_IS(k, n, lit) ((n) == sizeof(lit) - 1 && memcmp((k), (lit), sizeof(lit) - 1) == 0)

struct scan {
    struct aor_reqbody *rb;
    int seen_model, seen_stream, seen_options, seen_usage;
    int64_t max_tokens, max_completion_tokens;
};

#define VALUE_IS(v, n, lit) KEY_IS(v, n, lit)

/* a member of stream_options: include_usage must be read as the backend will read it */
static int on_option(const char *key, size_t key_len, const char *value, size_t value_len, void *data)
{
    struct scan *s = data;

    if (memchr(key, '\\', key_len) != NULL) /* "include_\u0075sage": a member we would not see */
        return -1;
    if (!KEY_IS(key, key_len, "include_usage"))
        return 0;
    if (s->seen_usage++)
        return -1;
    if (VALUE_IS(value, value_len, "true")) {
        s->rb->include_usage = 1;
    } else if (VALUE_IS(value, value_len, "false") || VALUE_IS(value, value_len, "null")) {
        s->rb->usage_value = value;
        s->rb->usage_value_len = value_len;
    } else {
        return -1; /* "yes", 1, {}: whether the backend sends usage would be its guess */
    }
    return 0;
}

static int on_member(const char *key, size_t key_len, const char *value, size_t value_len, void *data)
{
    struct scan *s = data;
    int64_t v;

    /* a member name with an escape ("m\u006fdel") names, for the backend's parser, a member we
     * would not see: a second model past the mapping, a stream hidden from the accounting */
    if (memchr(key, '\\', key_len) != NULL)
        return -1;
    if (KEY_IS(key, key_len, "model")) {
        if (s->seen_model++)
            return -1;
        s->rb->model_value = value;
        s->rb->model_value_len = value_len;
        if (!aor_json_plain_string(value, value_len, &s->rb->model, &s->rb->model_len))
            s->rb->model = NULL;
    } else if (KEY_IS(key, key_len, "stream")) {
        if (s->seen_stream++)
            return -1;
        s->rb->stream = value_len == 4 && memcmp(value, "true", 4) == 0;
    } else if (KEY_IS(key, key_len, "stream_options")) {
        if (s->seen_options++)
            return -1;
        s->rb->stream_options = 1;
        s->rb->options_value = value;
        s->rb->options_value_len = value_len;
        if (value[0] == '{') {
            if (aor_json_scan_object(value, value_len, on_option, s) != 0)
                return -1;
        } else if (!VALUE_IS(value, value_len, "null")) {
            return -1; /* a string, number, array or boolean: no stream_options the router can read */
        }
    } else if (KEY_IS(key, key_len, "max_tokens")) {
        if (aor_json_int(value, value_len, &v) && v > 0)
            s->max_tokens = v;
    } else if (KEY_IS(key, key_len, "max_completion_tokens") || KEY_IS(key, key_len, "max_output_tokens")) {
        if (aor_json_int(value, value_len, &v) && v > 0)
            s->max_completion_tokens = v;
    }
    return 0;
}

int aor_reqbody_scan(const char *body, size_t len, struct aor_reqbody *out)
{
    struct scan s = {out, 0, 0, 0, 0, 0, 0};

    memset(out, 0, sizeof(*out));
    if (aor_json_scan_object(body, len, on_member, &s) != 0)
        return -1;
    out->max_tokens = s.max_completion_tokens != 0 ? s.max_completion_tokens : s.max_tokens;
    return 0;
}

int aor_reqbody_with_model(const char *body, size_t len, const struct aor_reqbody *rb, const char *model, size_t model_len,
                           char *buf, size_t cap)
{
    size_t head, tail_off, need;

    if (rb->model_value != NULL) {
        head = (size_t)(rb->model_value - body);
        tail_off = head + rb->model_value_len;
        need = head + model_len + 2 + (len - tail_off);
        if (need > cap)
            return -1;
        memcpy(buf, body, head);
        buf[head] = '"';
        memcpy(buf + head + 1, model, model_len);
        buf[head + 1 + model_len] = '"';
        memcpy(buf + head + 2 + model_len, body + tail_off, len - tail_off);
        return (int)need;
    } else {
        /* {"model":"x", + the rest after '{' (a scanned body is an object, so '{' exists) */
        const char *brace = memchr(body, '{', len);
        const char *p = brace + 1;
        int empty;
        while (p < body + len && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
            ++p;
        empty = p < body + len && *p == '}';
        head = (size_t)(brace - body) + 1;
        need = head + 10 + model_len + (empty ? 0 : 1) + (len - head);
        if (need > cap)
            return -1;
        memcpy(buf, body, head);
        memcpy(buf + head, "\"model\":\"", 9);
        memcpy(buf + head + 9, model, model_len);
        buf[head + 9 + model_len] = '"';
        if (!empty)
            buf[head + 10 + model_len] = ',';
        memcpy(buf + head + 10 + model_len + (empty ? 0 : 1), body + head, len - head);
        return (int)need;
    }
}

int64_t aor_reqbody_estimate(const struct aor_reqbody *rb, size_t body_len)
{
    return (int64_t)body_len / 4 + rb->max_tokens;
}

/* `body` with [at, at + old) replaced by `ins`; spans of `rb` moved into buf (into `out`) */
static int splice(const char *body, size_t len, size_t at, size_t old, const char *ins, size_t ins_len,
                  const struct aor_reqbody *rb, char *buf, size_t cap, struct aor_reqbody *out)
{
    size_t need = len - old + ins_len;

    if (at + old > len || need > cap)
        return -1;
    memcpy(buf, body, at);
    memcpy(buf + at, ins, ins_len);
    memcpy(buf + at + ins_len, body + at + old, len - at - old);
    if (out != NULL) {
        *out = *rb;
#define MOVE(p)                                                                                                                    \
    if ((p) != NULL)                                                                                                               \
        (p) = (size_t)((p)-body) >= at + old ? buf + ((p)-body) + ins_len - old : buf + ((p)-body);
        MOVE(out->model_value)
        MOVE(out->model)
#undef MOVE
        /* the stream options are the rewritten ones now: only where they are matters no more */
        out->options_value = NULL;
        out->options_value_len = 0;
        out->usage_value = NULL;
        out->usage_value_len = 0;
        out->stream_options = 1;
        out->include_usage = 1;
    }
    return (int)need;
}

static size_t skip_blanks(const char *p, size_t i, size_t len)
{
    while (i < len && (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' || p[i] == '\n'))
        ++i;
    return i;
}

int aor_reqbody_with_stream_usage(const char *body, size_t len, const struct aor_reqbody *rb, char *buf, size_t cap,
                                  struct aor_reqbody *out)
{
    static const char member[] = "\"stream_options\":{\"include_usage\":true},";
    static const char object[] = "{\"include_usage\":true}";
    static const char inner[] = "\"include_usage\":true,";
    const char *brace;
    size_t head, j;
    int empty;

    if (rb->usage_value != NULL) /* {"include_usage":false} */
        return splice(body, len, (size_t)(rb->usage_value - body), rb->usage_value_len, "true", 4, rb, buf, cap, out);
    if (rb->options_value != NULL && rb->options_value[0] != '{') /* null */
        return splice(body, len, (size_t)(rb->options_value - body), rb->options_value_len, object, sizeof(object) - 1, rb, buf,
                      cap, out);
    /* a member first in the object: stream_options in the body, include_usage in stream_options */
    brace = rb->options_value != NULL ? rb->options_value : memchr(body, '{', len);
    if (brace == NULL)
        return -1;
    head = (size_t)(brace - body) + 1;
    j = skip_blanks(body, head, len);
    empty = j < len && body[j] == '}';
    if (rb->options_value != NULL)
        return splice(body, len, head, 0, inner, sizeof(inner) - (empty ? 2 : 1), rb, buf, cap, out);
    return splice(body, len, head, 0, member, sizeof(member) - (empty ? 2 : 1), rb, buf, cap, out);
}

int64_t aor_reqbody_default_completion(const struct aor_reqbody *rb, const char *op, size_t op_len, int64_t dflt)
{
    static const char *const generating[] = {"chat/completions", "completions", "responses"};
    size_t i;

    if (dflt <= 0 || rb->max_tokens > 0 || op == NULL)
        return 0;
    for (i = 0; i != sizeof(generating) / sizeof(generating[0]); ++i)
        if (op_len == strlen(generating[i]) && memcmp(op, generating[i], op_len) == 0)
            return dflt;
    return 0;
}
