/*
 * h1resp.c — see h1resp.h.
 */
#include <string.h>
#include <strings.h>
#include "h1resp.h"

/* picohttpparser as built into libh2o 2.2.5 */
struct phr_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};
int phr_parse_response(const char *buf, size_t len, int *minor_version, int *status, const char **msg, size_t *msg_len,
                       struct phr_header *headers, size_t *num_headers, size_t last_len);
ssize_t phr_decode_chunked(struct phr_chunked_decoder *decoder, char *buf, size_t *bufsz);

/* a content-length value: digits only (trailing blanks allowed), at most 18 of them; -1 otherwise */
static int64_t parse_length(const char *p, size_t len)
{
    int64_t v = 0;
    size_t i;

    while (len != 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
        --len;
    if (len == 0 || len > 18)
        return -1;
    for (i = 0; i != len; ++i) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

/* whether the comma-separated list `v` has the token `tok` (case-insensitive) */
static int has_token(h2o_iovec_t v, const char *tok)
{
    size_t tok_len = strlen(tok), i = 0;

    while (i < v.len) {
        size_t start, end;
        while (i < v.len && (v.base[i] == ' ' || v.base[i] == '\t' || v.base[i] == ','))
            ++i;
        start = i;
        while (i < v.len && v.base[i] != ',')
            ++i;
        end = i;
        while (end > start && (v.base[end - 1] == ' ' || v.base[end - 1] == '\t'))
            --end;
        if (end - start == tok_len && strncasecmp(v.base + start, tok, tok_len) == 0)
            return 1;
    }
    return 0;
}

static ssize_t fail(struct aor_h1resp_head *out, const char *why)
{
    out->error = why;
    return -1;
}

ssize_t aor_h1resp_parse_head(struct aor_h1resp_parser *p, char *buf, size_t len, int is_head, struct aor_h1resp_head *out)
{
    struct phr_header src[AOR_H1RESP_MAX_HEADERS];
    size_t num = AOR_H1RESP_MAX_HEADERS, i, msg_len;
    const char *msg;
    int minor, status, ret, chunked = 0, close = 0, keep_alive = 0;
    int64_t length = -1;

    out->error = NULL;
    ret = phr_parse_response(buf, len, &minor, &status, &msg, &msg_len, src, &num, p->last_len);
    if (ret == -2) {
        if (p->interim + len > AOR_H1RESP_MAX_HEAD_BYTES)
            return fail(out, "response head over 64 KiB");
        p->last_len = len;
        return 0;
    }
    if (ret < 0)
        return fail(out, num == AOR_H1RESP_MAX_HEADERS ? "response head with more than 100 header fields (or malformed)"
                                                       : "malformed response head");
    p->last_len = 0;
    if (p->interim + (size_t)ret > AOR_H1RESP_MAX_HEAD_BYTES)
        return fail(out, "response head over 64 KiB");
    if (status < 100 || status == 101)
        return fail(out, "unexpected status in the response (1xx upgrade or below 100)");
    if (status < 200) {
        /* an interim answer (100, 103): the caller drops it; its bytes count against the head's bound */
        p->interim += (size_t)ret;
        out->status = status;
        return ret;
    }

    out->status = status;
    out->minor_version = minor;
    out->num_headers = num;
    for (i = 0; i != num; ++i) {
        const h2o_token_t *tok;
        h2o_iovec_t value = h2o_iovec_init(src[i].value, src[i].value_len);
        if (src[i].name == NULL)
            return fail(out, "folded header line in the response");
        h2o_strtolower((char *)src[i].name, src[i].name_len); /* in the caller's buffer */
        if ((tok = h2o_lookup_token(src[i].name, src[i].name_len)) != NULL) {
            out->headers[i].name = (h2o_iovec_t *)&tok->buf;
        } else {
            out->names[i] = h2o_iovec_init(src[i].name, src[i].name_len);
            out->headers[i].name = &out->names[i];
        }
        out->headers[i].orig_name = src[i].name;
        out->headers[i].value = value;
        if (tok == H2O_TOKEN_CONTENT_LENGTH) {
            int64_t v = parse_length(value.base, value.len);
            if (v < 0 || (length >= 0 && v != length))
                return fail(out, "invalid content-length in the response");
            length = v;
        } else if (tok == H2O_TOKEN_TRANSFER_ENCODING) {
            /* "chunked", once: anything else cannot be framed here, or is an attempt to confuse */
            if (chunked || !has_token(value, "chunked") || memchr(value.base, ',', value.len) != NULL)
                return fail(out, "unsupported transfer-encoding in the response");
            chunked = 1;
        } else if (tok == H2O_TOKEN_CONNECTION) {
            close |= has_token(value, "close");
            keep_alive |= has_token(value, "keep-alive");
        }
    }
    if (chunked && length >= 0)
        return fail(out, "both transfer-encoding and content-length in the response");

    memset(&out->body, 0, sizeof(out->body));
    if (is_head || status == 204 || status == 304) {
        out->body.framing = AOR_H1RESP_NONE;
    } else if (chunked) {
        out->body.framing = AOR_H1RESP_CHUNKED;
        out->body.chunked.consume_trailer = 1; /* trailers are read and dropped */
    } else if (length >= 0) {
        out->body.framing = AOR_H1RESP_LENGTH;
        out->body.remaining = (uint64_t)length;
    } else {
        out->body.framing = AOR_H1RESP_EOF;
    }
    out->keep_alive = out->body.framing != AOR_H1RESP_EOF && !close && (minor >= 1 || keep_alive);
    return ret;
}

int aor_h1resp_body_step(struct aor_h1resp_body *b, char *buf, size_t len, size_t *data_len, size_t *extra)
{
    size_t n;
    ssize_t ret;

    *data_len = 0;
    *extra = 0;
    switch (b->framing) {
    case AOR_H1RESP_NONE:
        *extra = len;
        return 1;
    case AOR_H1RESP_LENGTH:
        n = len < b->remaining ? len : (size_t)b->remaining;
        b->remaining -= n;
        *data_len = n;
        if (b->remaining != 0)
            return 0;
        *extra = len - n;
        return 1;
    case AOR_H1RESP_CHUNKED:
        n = len;
        if ((ret = phr_decode_chunked(&b->chunked, buf, &n)) == -1)
            return -1;
        *data_len = n;
        if (ret == -2)
            return 0;
        *extra = (size_t)ret;
        return 1;
    case AOR_H1RESP_EOF:
        *data_len = len;
        return 0;
    }
    return -1;
}
