/*
 * h1resp — a backend's HTTP/1.1 response, as bytes: the head (status, headers, how the
 * body is framed, whether the connection may be reused) and the body's framing removed
 * step by step. Pure (no I/O), so it is unit-tested and fuzzed on its own; upstream_h1
 * feeds it what the socket read. Parsing is picohttpparser's, from libh2o.
 * Bounds: a head (interim 1xx heads included) of AOR_H1RESP_MAX_HEAD_BYTES and
 * AOR_H1RESP_MAX_HEADERS fields.
 */
#ifndef AOR_H1RESP_H
#define AOR_H1RESP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <h2o.h>

#define AOR_H1RESP_MAX_HEAD_BYTES 65536
#define AOR_H1RESP_MAX_HEADERS 100

/* picohttpparser's chunked decoder as built into libh2o 2.2.5 (deps/picohttpparser/picohttpparser.h;
 * Debian installs no header) */
struct phr_chunked_decoder {
    size_t bytes_left_in_chunk;
    char consume_trailer;
    char _hex_count;
    char _state;
};

enum aor_h1resp_framing {
    AOR_H1RESP_NONE,    /* no body: HEAD, 204, 304 */
    AOR_H1RESP_LENGTH,  /* content-length */
    AOR_H1RESP_CHUNKED, /* transfer-encoding: chunked */
    AOR_H1RESP_EOF,     /* neither: the body ends when the backend closes (cleanly) */
};

/* the body's framing, as it is being read */
struct aor_h1resp_body {
    enum aor_h1resp_framing framing;
    uint64_t remaining; /* AOR_H1RESP_LENGTH: bytes still due */
    struct phr_chunked_decoder chunked;
};

struct aor_h1resp_head {
    int status; /* 200..999 (interim 1xx heads are skipped, a 101 is an error) */
    int minor_version;
    int keep_alive; /* the connection may carry another request once the body is read */
    struct aor_h1resp_body body;
    size_t num_headers;
    h2o_header_t headers[AOR_H1RESP_MAX_HEADERS]; /* names lower-cased (in the caller's buffer) and h2o tokens where known */
    h2o_iovec_t names[AOR_H1RESP_MAX_HEADERS];    /* the names that are no token */
    const char *error;                            /* why -1 was returned (a static string) */
};

/* what the head parser keeps between the reads of one response; zero it for each response */
struct aor_h1resp_parser {
    size_t last_len; /* bytes looked at in the previous call (a head in small pieces costs O(total)) */
    size_t interim;  /* bytes of interim (1xx) heads already taken: they count against the bound */
};

/**
 * Parses the response head at the start of `buf` (`len` bytes read and not yet taken).
 * `is_head`: the request was a HEAD.
 * Returns the bytes of a complete head — an interim one (out->status 100..199, no other
 * field set: the caller drops those bytes and calls again) or the final one (the body
 * follows) —, 0 when the head is not complete yet (and still within its bound), or -1
 * (out->error says why: malformed, over a bound, or a framing that cannot be trusted).
 * Header names are lower-cased in place; out->headers point into `buf`.
 */
ssize_t aor_h1resp_parse_head(struct aor_h1resp_parser *p, char *buf, size_t len, int is_head, struct aor_h1resp_head *out);

/**
 * One step through the body: `buf` holds `len` bytes read after what earlier steps took.
 * The body's bytes among them are moved to the front of `buf` (chunk framing removed):
 * *data_len of them. Returns 1 when the body ended (*extra: bytes that followed it, which
 * a reusable connection must not have), 0 when more is due (every byte was taken), -1 for
 * a malformed chunked body. AOR_H1RESP_EOF never ends here: the caller sees the close.
 */
int aor_h1resp_body_step(struct aor_h1resp_body *b, char *buf, size_t len, size_t *data_len, size_t *extra);

#endif
