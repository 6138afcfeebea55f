/* usage.c — see usage.h */
#include <stdlib.h>
#include <string.h>
#include "jsonscan.h"
#include "usage.h"

#define KEY_IS(k, n, lit) ((n) == sizeof(lit) - 1 && memcmp((k), (lit), sizeof(lit) - 1) == 0)

static int on_usage_member(const char *key, size_t key_len, const char *value, size_t value_len, void *data)
{
    struct aor_usage *u = data;
    int64_t v;

    if (!aor_json_int(value, value_len, &v) || v < 0)
        return 0;
    /* chat, completions, embeddings; the responses API says input_tokens / output_tokens */
    if (KEY_IS(key, key_len, "prompt_tokens") || KEY_IS(key, key_len, "input_tokens"))
        u->prompt = v;
    else if (KEY_IS(key, key_len, "completion_tokens") || KEY_IS(key, key_len, "output_tokens"))
        u->completion = v;
    else if (KEY_IS(key, key_len, "total_tokens"))
        u->total = v;
    return 0;
}

static int on_top_member(const char *key, size_t key_len, const char *value, size_t value_len, void *data)
{
    struct aor_usage *u = data, found = {0, 0, 0, 0};

    /* a responses API stream's response.completed event carries it in "response" */
    if (KEY_IS(key, key_len, "response") && value[0] == '{') {
        aor_json_scan_object(value, value_len, on_top_member, data);
        return 0;
    }
    if (!KEY_IS(key, key_len, "usage") || value[0] != '{')
        return 0;
    if (aor_json_scan_object(value, value_len, on_usage_member, &found) != 0)
        return 0;
    if (found.total == 0)
        found.total = found.prompt + found.completion;
    found.found = 1;
    *u = found;
    return 0;
}

int aor_usage_from_json(const char *json, size_t len, struct aor_usage *u)
{
    struct aor_usage found = {0, 0, 0, 0};

    /* a reply that does not parse whole has no usage we can trust */
    if (aor_json_scan_object(json, len, on_top_member, &found) != 0 || !found.found)
        return 0;
    *u = found;
    return 1;
}

/* the end of the object starting at s[0] == '{', or NULL when it does not end within len */
static const char *object_end(const char *s, size_t len)
{
    int depth = 0, in_str = 0;
    size_t i;

    for (i = 0; i < len; ++i) { /* `<`: an escape may step over the last byte */
        char c = s[i];
        if (in_str) {
            if (c == '\\')
                ++i;
            else if (c == '"')
                in_str = 0;
        } else if (c == '"') {
            in_str = 1;
        } else if (c == '{') {
            ++depth;
        } else if (c == '}' && --depth == 0) {
            return s + i + 1;
        }
    }
    return NULL;
}

int aor_usage_from_fragment(const char *s, size_t len, struct aor_usage *u)
{
    static const char key[] = "\"usage\"";
    const char *p = s, *end = s + len;
    int found = 0;

    while ((p = memmem(p, (size_t)(end - p), key, sizeof(key) - 1)) != NULL) {
        const char *v = p + sizeof(key) - 1, *e;
        p = v;
        while (v < end && (*v == ' ' || *v == '\t' || *v == '\r' || *v == '\n'))
            ++v;
        if (v == end || *v != ':')
            continue;
        ++v;
        while (v < end && (*v == ' ' || *v == '\t' || *v == '\r' || *v == '\n'))
            ++v;
        if (v == end || *v != '{' || (e = object_end(v, (size_t)(end - v))) == NULL)
            continue;
        {
            struct aor_usage got = {0, 0, 0, 0};
            if (aor_json_scan_object(v, (size_t)(e - v), on_usage_member, &got) == 0) {
                if (got.total == 0)
                    got.total = got.prompt + got.completion;
                got.found = 1;
                *u = got;
                found = 1;
            }
        }
    }
    return found;
}

/* cheap test before parsing: does the event carry a usage object (not null)? */
static int mentions_usage(const char *s, size_t len)
{
    static const char key[] = "\"usage\"";
    const char *p = s, *end = s + len;

    while ((p = memmem(p, end - p, key, sizeof(key) - 1)) != NULL) {
        p += sizeof(key) - 1;
        while (p < end && (*p == ' ' || *p == ':' || *p == '\t'))
            ++p;
        if (p < end && *p == '{')
            return 1;
    }
    return 0;
}

/* does an event carry generated text: a non-empty "content", "text" or (responses API) "delta" string */
static int has_text(const char *s, size_t len)
{
    static const char *const keys[] = {"\"content\":\"", "\"text\":\"", "\"delta\":\""};
    size_t k;

    for (k = 0; k != 3; ++k) {
        size_t kl = strlen(keys[k]);
        const char *p = memmem(s, len, keys[k], kl);
        if (p != NULL && p + kl < s + len && p[kl] != '"')
            return 1;
    }
    return 0;
}

static void on_line(struct aor_sse_scanner *s, const char *line, size_t len)
{
    if (len < 5 || memcmp(line, "data:", 5) != 0)
        return;
    line += 5, len -= 5;
    while (len != 0 && *line == ' ')
        ++line, --len;
    if (len == 6 && memcmp(line, "[DONE]", 6) == 0) {
        s->done = 1;
        return;
    }
    if (mentions_usage(line, len))
        aor_usage_from_json(line, len, &s->usage);
    else if (has_text(line, len))
        ++s->content_events;
}

void aor_sse_feed(struct aor_sse_scanner *s, const char *bytes, size_t len)
{
    while (len != 0) {
        const char *nl = memchr(bytes, '\n', len);
        size_t take = nl != NULL ? (size_t)(nl - bytes) : len;

        if (!s->skipping) {
            if (s->len + take > AOR_SSE_MAX_LINE) {
                s->skipping = 1;
                ++s->oversized;
                s->len = 0;
            } else if (nl != NULL && s->len == 0) {
                /* the whole line is in this chunk: no copy */
                size_t l = take;
                if (l != 0 && bytes[l - 1] == '\r')
                    --l;
                on_line(s, bytes, l);
            } else {
                if (s->line == NULL && (s->line = malloc(AOR_SSE_MAX_LINE)) == NULL) {
                    s->skipping = 1;
                } else {
                    memcpy(s->line + s->len, bytes, take);
                    s->len += take;
                }
                if (nl != NULL && !s->skipping) {
                    size_t l = s->len;
                    if (l != 0 && s->line[l - 1] == '\r')
                        --l;
                    on_line(s, s->line, l);
                    s->len = 0;
                }
            }
        }
        if (nl == NULL)
            break;
        s->skipping = 0;
        bytes = nl + 1;
        len -= take + 1;
    }
}

void aor_sse_dispose(struct aor_sse_scanner *s)
{
    free(s->line);
    s->line = NULL;
}
