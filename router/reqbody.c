/* reqbody.c — see reqbody.h */
#include <string.h>
#include "jsonscan.h"
#include "reqbody.h"

#define KEY_IS(k, n, lit) ((n) == sizeof(lit) - 1 && memcmp((k), (lit), sizeof(lit) - 1) == 0)

struct scan {
    struct aor_reqbody *rb;
    int seen_model, seen_stream, seen_options;
    int64_t max_tokens, max_completion_tokens;
};

static int on_option(const char *key, size_t key_len, const char *value, size_t value_len, void *data)
{
    (void)data;
    return KEY_IS(key, key_len, "include_usage") && value_len == 4 && memcmp(value, "true", 4) == 0;
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
        if (value_len != 0 && value[0] == '{')
            s->rb->include_usage = aor_json_scan_object(value, value_len, on_option, NULL) == 1;
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
    struct scan s = {out, 0, 0, 0, 0, 0};

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

int aor_reqbody_with_stream_usage(const char *body, size_t len, char *buf, size_t cap)
{
    static const char member[] = "\"stream_options\":{\"include_usage\":true}";
    const char *brace = memchr(body, '{', len), *p;
    size_t head, need;
    int empty;

    if (brace == NULL)
        return -1;
    p = brace + 1;
    while (p < body + len && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        ++p;
    empty = p < body + len && *p == '}';
    head = (size_t)(brace - body) + 1;
    need = len + sizeof(member) - 1 + (empty ? 0 : 1);
    if (need > cap)
        return -1;
    memcpy(buf, body, head);
    memcpy(buf + head, member, sizeof(member) - 1);
    if (!empty)
        buf[head + sizeof(member) - 1] = ',';
    memcpy(buf + head + sizeof(member) - 1 + (empty ? 0 : 1), body + head, len - head);
    return (int)need;
}
