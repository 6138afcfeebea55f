/* jsonscan.c — see jsonscan.h. A recursive-descent validator that only records spans. */
#include <string.h>
#include "jsonscan.h"

struct cursor {
    const char *p, *end;
};

static void skip_ws(struct cursor *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        ++c->p;
}

static int is_hex(char ch)
{
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

static int skip_string(struct cursor *c)
{
    if (c->p >= c->end || *c->p != '"')
        return -1;
    for (++c->p; c->p < c->end; ++c->p) {
        unsigned char ch = (unsigned char)*c->p;
        if (ch == '"') {
            ++c->p;
            return 0;
        }
        if (ch < 0x20)
            return -1;
        if (ch == '\\') {
            if (++c->p >= c->end)
                return -1;
            switch (*c->p) {
            case '"':
            case '\\':
            case '/':
            case 'b':
            case 'f':
            case 'n':
            case 'r':
            case 't':
                break;
            case 'u':
                if (c->end - c->p < 5 || !is_hex(c->p[1]) || !is_hex(c->p[2]) || !is_hex(c->p[3]) || !is_hex(c->p[4]))
                    return -1;
                c->p += 4;
                break;
            default:
                return -1;
            }
        }
    }
    return -1;
}

static int skip_digits(struct cursor *c)
{
    const char *start = c->p;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9')
        ++c->p;
    return c->p > start ? 0 : -1;
}

static int skip_number(struct cursor *c)
{
    if (c->p < c->end && *c->p == '-')
        ++c->p;
    if (c->p < c->end && *c->p == '0') {
        ++c->p;
    } else if (skip_digits(c) != 0) {
        return -1;
    }
    if (c->p < c->end && *c->p == '.') {
        ++c->p;
        if (skip_digits(c) != 0)
            return -1;
    }
    if (c->p < c->end && (*c->p == 'e' || *c->p == 'E')) {
        ++c->p;
        if (c->p < c->end && (*c->p == '+' || *c->p == '-'))
            ++c->p;
        if (skip_digits(c) != 0)
            return -1;
    }
    return 0;
}

static int skip_literal(struct cursor *c, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, lit, n) != 0)
        return -1;
    c->p += n;
    return 0;
}

static int skip_value(struct cursor *c, int depth);

static int skip_container(struct cursor *c, int depth, char close, int members)
{
    if (depth > AOR_JSON_MAX_DEPTH)
        return -1;
    ++c->p; /* the opening bracket */
    skip_ws(c);
    if (c->p < c->end && *c->p == close) {
        ++c->p;
        return 0;
    }
    for (;;) {
        skip_ws(c);
        if (members) {
            if (skip_string(c) != 0)
                return -1;
            skip_ws(c);
            if (c->p >= c->end || *c->p != ':')
                return -1;
            ++c->p;
            skip_ws(c);
        }
        if (skip_value(c, depth) != 0)
            return -1;
        skip_ws(c);
        if (c->p >= c->end)
            return -1;
        if (*c->p == ',') {
            ++c->p;
            continue;
        }
        if (*c->p != close)
            return -1;
        ++c->p;
        return 0;
    }
}

static int skip_value(struct cursor *c, int depth)
{
    if (c->p >= c->end)
        return -1;
    switch (*c->p) {
    case '"':
        return skip_string(c);
    case '{':
        return skip_container(c, depth + 1, '}', 1);
    case '[':
        return skip_container(c, depth + 1, ']', 0);
    case 't':
        return skip_literal(c, "true");
    case 'f':
        return skip_literal(c, "false");
    case 'n':
        return skip_literal(c, "null");
    default:
        return skip_number(c);
    }
}

int aor_json_scan_object(const char *s, size_t len, aor_json_member_cb cb, void *data)
{
    struct cursor c = {s, s + len};

    skip_ws(&c);
    if (c.p >= c.end || *c.p != '{')
        return -1;
    ++c.p;
    skip_ws(&c);
    if (c.p < c.end && *c.p == '}') {
        ++c.p;
    } else {
        for (;;) {
            const char *key, *value;
            size_t key_len;
            int ret;
            skip_ws(&c);
            key = c.p;
            if (skip_string(&c) != 0)
                return -1;
            key_len = (size_t)(c.p - key) - 2;
            skip_ws(&c);
            if (c.p >= c.end || *c.p != ':')
                return -1;
            ++c.p;
            skip_ws(&c);
            value = c.p;
            if (skip_value(&c, 1) != 0)
                return -1;
            if ((ret = cb(key + 1, key_len, value, (size_t)(c.p - value), data)) != 0)
                return ret;
            skip_ws(&c);
            if (c.p >= c.end)
                return -1;
            if (*c.p == ',') {
                ++c.p;
                continue;
            }
            if (*c.p != '}')
                return -1;
            ++c.p;
            break;
        }
    }
    skip_ws(&c);
    return c.p == c.end ? 0 : -1;
}

int aor_json_int(const char *value, size_t len, int64_t *out)
{
    int64_t v = 0;
    size_t i = 0;
    int neg = 0;

    if (len != 0 && value[0] == '-')
        neg = 1, i = 1;
    if (i == len || len - i > 18 || (value[i] == '0' && len - i > 1))
        return 0;
    for (; i != len; ++i) {
        if (value[i] < '0' || value[i] > '9')
            return 0;
        v = v * 10 + (value[i] - '0');
    }
    *out = neg ? -v : v;
    return 1;
}

int aor_json_plain_string(const char *value, size_t len, const char **inner, size_t *inner_len)
{
    if (len < 2 || value[0] != '"' || value[len - 1] != '"' || memchr(value + 1, '\\', len - 2) != NULL)
        return 0;
    *inner = value + 1;
    *inner_len = len - 2;
    return 1;
}
