/* usage.c — see usage.h */
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include "usage.h"

static int64_t int_member(json_t *obj, const char *name)
{
    json_t *v = json_object_get(obj, name);
    return json_is_integer(v) && json_integer_value(v) >= 0 ? (int64_t)json_integer_value(v) : 0;
}

int aor_usage_from_json(const char *json, size_t len, struct aor_usage *u)
{
    json_t *doc, *usage;
    int found = 0;

    if ((doc = json_loadb(json, len, JSON_REJECT_DUPLICATES, NULL)) == NULL)
        return 0;
    usage = json_object_get(doc, "usage");
    if (json_is_object(usage)) {
        u->prompt = int_member(usage, "prompt_tokens");
        u->completion = int_member(usage, "completion_tokens");
        u->total = int_member(usage, "total_tokens");
        if (u->total == 0)
            u->total = u->prompt + u->completion;
        u->found = found = 1;
    }
    json_decref(doc);
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

int64_t aor_usage_estimate(struct json_t *body, size_t body_len)
{
    int64_t est = (int64_t)body_len / 4, max = 0;

    if (body != NULL) {
        max = int_member(body, "max_completion_tokens");
        if (max == 0)
            max = int_member(body, "max_tokens");
    }
    return est + max;
}
