/*
 * test_h1resp.c — router/h1resp.c: a backend's response head and body framing.
 */
#include <stdlib.h>
#include <string.h>
#include "h1resp.h"
#include "test.h"

/* parses `text` (copied: names are lower-cased in place) as one head; the return of the parser */
static ssize_t parse(const char *text, int is_head, struct aor_h1resp_head *h, char **copy)
{
    struct aor_h1resp_parser p = {0, 0};
    size_t len = strlen(text);
    ssize_t r;

    *copy = malloc(len + 1);
    memcpy(*copy, text, len + 1);
    while ((r = aor_h1resp_parse_head(&p, *copy, len, is_head, h)) > 0 && h->status < 200) {
        memmove(*copy, *copy + r, len - (size_t)r);
        len -= (size_t)r;
    }
    return r;
}

static void test_framing(void)
{
    struct aor_h1resp_head h;
    char *c;
    ssize_t r;

    r = parse("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{\"a\":1}", 0, &h, &c);
    CHECK_EQ_INT(r, 71);
    CHECK_EQ_INT(h.status, 200);
    CHECK_EQ_INT(h.body.framing, AOR_H1RESP_LENGTH);
    CHECK_EQ_INT(h.body.remaining, 12);
    CHECK_EQ_INT(h.keep_alive, 1);
    CHECK_EQ_INT(h.num_headers, 2);
    CHECK(h.headers[0].name == &H2O_TOKEN_CONTENT_TYPE->buf); /* lower-cased, a token */
    free(c);

    r = parse("HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\nx-a: b\r\n\r\n", 0, &h, &c);
    CHECK(r > 0);
    CHECK_EQ_INT(h.body.framing, AOR_H1RESP_CHUNKED);
    CHECK(h.headers[1].name->len == 3 && memcmp(h.headers[1].name->base, "x-a", 3) == 0);
    free(c);

    /* no length: ends at the close, never pooled */
    parse("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n", 0, &h, &c);
    CHECK_EQ_INT(h.body.framing, AOR_H1RESP_EOF);
    CHECK_EQ_INT(h.keep_alive, 0);
    free(c);

    /* HEAD, 204, 304: no body whatever the headers say */
    parse("HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n", 1, &h, &c);
    CHECK_EQ_INT(h.body.framing, AOR_H1RESP_NONE);
    free(c);
    parse("HTTP/1.1 204 No Content\r\n\r\n", 0, &h, &c);
    CHECK_EQ_INT(h.body.framing, AOR_H1RESP_NONE);
    CHECK_EQ_INT(h.keep_alive, 1);
    free(c);
    parse("HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n", 0, &h, &c);
    CHECK_EQ_INT(h.body.framing, AOR_H1RESP_NONE);
    free(c);

    /* keep-alive: HTTP/1.0 only when asked, connection: close never */
    parse("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", 0, &h, &c);
    CHECK_EQ_INT(h.keep_alive, 0);
    free(c);
    parse("HTTP/1.0 200 OK\r\ncontent-length: 1\r\nconnection: Keep-Alive\r\n\r\n", 0, &h, &c);
    CHECK_EQ_INT(h.keep_alive, 1);
    free(c);
    parse("HTTP/1.1 200 OK\r\ncontent-length: 1\r\nconnection: foo, close\r\n\r\n", 0, &h, &c);
    CHECK_EQ_INT(h.keep_alive, 0);
    free(c);

    /* the same length twice is one length */
    CHECK(parse("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n", 0, &h, &c) > 0);
    CHECK_EQ_INT(h.body.remaining, 5);
    free(c);
}

static void test_refused(void)
{
    static const char *const bad[] = {
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 1234567890123456789\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nx-a: 1\r\n folded\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\n\r\n",
        "HTTP/1.1 099 Odd\r\n\r\n",
        "HTTP/2.0 200 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nx-a: a\001b\r\n\r\n",
        "garbage\r\n\r\n",
    };
    struct aor_h1resp_head h;
    size_t i;
    char *c;

    for (i = 0; i != sizeof(bad) / sizeof(bad[0]); ++i) {
        ssize_t r = parse(bad[i], 0, &h, &c);
        if (r != -1)
            fprintf(stderr, "accepted: %s\n", bad[i]);
        CHECK_EQ_INT(r, -1);
        CHECK(h.error != NULL);
        free(c);
    }
}

static void test_bounds(void)
{
    struct aor_h1resp_head h;
    struct aor_h1resp_parser p = {0, 0};
    size_t len = 0, i;
    char *buf = malloc(200000), *c;
    ssize_t r;

    /* 100 header fields pass, 101 do not */
    len = (size_t)sprintf(buf, "HTTP/1.1 200 OK\r\n");
    for (i = 0; i != 100; ++i)
        len += (size_t)sprintf(buf + len, "x-%zu: v\r\n", i);
    strcpy(buf + len, "\r\n");
    CHECK(parse(buf, 0, &h, &c) > 0);
    CHECK_EQ_INT(h.num_headers, 100);
    free(c);
    strcpy(buf + len, "x-last: v\r\n\r\n");
    CHECK_EQ_INT(parse(buf, 0, &h, &c), -1);
    free(c);

    /* an incomplete head: more is due up to 64 KiB, then it is an error */
    len = (size_t)sprintf(buf, "HTTP/1.1 200 OK\r\nx-long: ");
    memset(buf + len, 'a', 70000);
    CHECK_EQ_INT(aor_h1resp_parse_head(&p, buf, 65536, 0, &h), 0);
    CHECK_EQ_INT(aor_h1resp_parse_head(&p, buf, 65537, 0, &h), -1);

    /* interim heads count against the same bound */
    memset(&p, 0, sizeof(p));
    for (len = 0; len < 65536 - 26;)
        len += (size_t)sprintf(buf + len, "HTTP/1.1 100 Continue\r\n\r\n");
    len += (size_t)sprintf(buf + len, "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
    {
        size_t off = 0;
        while ((r = aor_h1resp_parse_head(&p, buf + off, len - off, 0, &h)) > 0 && h.status < 200)
            off += (size_t)r;
        CHECK_EQ_INT(r, -1);
    }
    /* a couple of them are skipped */
    CHECK(
        parse(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: x\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            0, &h, &c) > 0);
    CHECK_EQ_INT(h.status, 200);
    free(c);
    free(buf);
}

static void test_body(void)
{
    struct aor_h1resp_body b;
    char buf[256];
    size_t data, extra;

    /* content-length: what is due, then the end; bytes beyond are reported */
    memset(&b, 0, sizeof(b));
    b.framing = AOR_H1RESP_LENGTH;
    b.remaining = 10;
    strcpy(buf, "01234");
    CHECK_EQ_INT(aor_h1resp_body_step(&b, buf, 5, &data, &extra), 0);
    CHECK_EQ_INT(data, 5);
    strcpy(buf, "56789XY");
    CHECK_EQ_INT(aor_h1resp_body_step(&b, buf, 7, &data, &extra), 1);
    CHECK_EQ_INT(data, 5);
    CHECK_EQ_INT(extra, 2);

    /* chunked: framing removed, trailers consumed, the end found */
    memset(&b, 0, sizeof(b));
    b.framing = AOR_H1RESP_CHUNKED;
    b.chunked.consume_trailer = 1;
    strcpy(buf, "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-t: 1\r\n\r\n");
    CHECK_EQ_INT(aor_h1resp_body_step(&b, buf, strlen(buf), &data, &extra), 1);
    CHECK_EQ_INT(data, 11);
    CHECK(memcmp(buf, "hello world", 11) == 0);
    CHECK_EQ_INT(extra, 0);

    /* chunked, cut before the last chunk: more is due (the caller's close makes it "truncated") */
    memset(&b, 0, sizeof(b));
    b.framing = AOR_H1RESP_CHUNKED;
    strcpy(buf, "5\r\nhello\r\n4\r\nwo");
    CHECK_EQ_INT(aor_h1resp_body_step(&b, buf, strlen(buf), &data, &extra), 0);
    CHECK_EQ_INT(data, 7);

    /* malformed chunk size */
    memset(&b, 0, sizeof(b));
    b.framing = AOR_H1RESP_CHUNKED;
    strcpy(buf, "zz\r\nhello\r\n");
    CHECK_EQ_INT(aor_h1resp_body_step(&b, buf, strlen(buf), &data, &extra), -1);
    /* a chunk size beyond 64 bits */
    memset(&b, 0, sizeof(b));
    b.framing = AOR_H1RESP_CHUNKED;
    strcpy(buf, "11111111111111111\r\n");
    CHECK_EQ_INT(aor_h1resp_body_step(&b, buf, strlen(buf), &data, &extra), -1);

    /* no framing: everything is body, the end is the caller's */
    memset(&b, 0, sizeof(b));
    b.framing = AOR_H1RESP_EOF;
    CHECK_EQ_INT(aor_h1resp_body_step(&b, buf, 9, &data, &extra), 0);
    CHECK_EQ_INT(data, 9);
}

int main(void)
{
    test_framing();
    test_refused();
    test_bounds();
    test_body();
    return aor_test_done("h1resp");
}
