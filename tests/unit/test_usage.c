/* unit tests for router/usage.c: usage from JSON replies and SSE streams */
#include <stdlib.h>
#include <string.h>
#include "usage.h"
#include "test.h"

static void test_json(void)
{
    struct aor_usage u = {0};
    const char *reply = "{\"id\":\"x\",\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":30,\"total_tokens\":42}}";

    CHECK(aor_usage_from_json(reply, strlen(reply), &u) == 1);
    CHECK_EQ_INT(u.prompt, 12);
    CHECK_EQ_INT(u.completion, 30);
    CHECK_EQ_INT(u.total, 42);
    memset(&u, 0, sizeof(u));
    CHECK(aor_usage_from_json("{\"usage\":null}", 14, &u) == 0);
    CHECK(aor_usage_from_json("not json", 8, &u) == 0);
    /* embeddings: no completion_tokens */
    CHECK(aor_usage_from_json("{\"usage\":{\"prompt_tokens\":5,\"total_tokens\":5}}", 46, &u) == 1);
    CHECK_EQ_INT(u.total, 5);
    CHECK_EQ_INT(u.completion, 0);
    /* total missing: the sum */
    CHECK(aor_usage_from_json("{\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}", 51, &u) == 1);
    CHECK_EQ_INT(u.total, 7);
}

static const char stream[] =
    "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n"
    "data: {\"choices\":[{\"delta\":{}}],\"usage\":null}\r\n\r\n"
    "data: {\"choices\":[],\"usage\": {\"prompt_tokens\":9,\"completion_tokens\":3,\"total_tokens\":12}}\n\n"
    "data: [DONE]\n\n";

static void test_sse_whole_and_split(void)
{
    size_t split;

    for (split = 0; split <= sizeof(stream) - 1; ++split) {
        struct aor_sse_scanner s;
        memset(&s, 0, sizeof(s));
        aor_sse_feed(&s, stream, split);
        aor_sse_feed(&s, stream + split, sizeof(stream) - 1 - split);
        CHECK(s.usage.found);
        CHECK_EQ_INT(s.usage.total, 12);
        CHECK_EQ_INT(s.usage.prompt, 9);
        CHECK(s.done);
        aor_sse_dispose(&s);
    }
    /* byte by byte */
    {
        struct aor_sse_scanner s;
        size_t i;
        memset(&s, 0, sizeof(s));
        for (i = 0; i != sizeof(stream) - 1; ++i)
            aor_sse_feed(&s, stream + i, 1);
        CHECK_EQ_INT(s.usage.completion, 3);
        aor_sse_dispose(&s);
    }
}

static void test_sse_oversized_line(void)
{
    struct aor_sse_scanner s;
    size_t big = AOR_SSE_MAX_LINE + 1;
    char *line = malloc(big);

    memset(&s, 0, sizeof(s));
    memset(line, 'x', big);
    aor_sse_feed(&s, "data: ", 6);
    aor_sse_feed(&s, line, big); /* limit + 1: skipped, not buffered */
    {
        const char *tail = "\ndata: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}\n";
        aor_sse_feed(&s, tail, strlen(tail));
    }
    CHECK_EQ_INT(s.oversized, 1);
    CHECK(s.usage.found);
    CHECK_EQ_INT(s.usage.total, 2);
    aor_sse_dispose(&s);
    free(line);
}

static void test_fragment(void)
{
    struct aor_usage u = {0};
    const char tail[] = "12,0.5]}],\"model\":\"emb\",\"usage\":{\"prompt_tokens\":70000,\"total_tokens\":70000}}";
    const char cut[] = "0.1,0.2],\"usage\":{\"prompt_tokens\":5,\"total";
    const char quoted[] = "\"x\":\"}{\",\"usage\" : {\"prompt_tokens\":3,\"note\":\"}\",\"total_tokens\":4}";

    CHECK(aor_usage_from_fragment(tail, strlen(tail), &u) == 1);
    CHECK_EQ_INT(u.prompt, 70000);
    CHECK_EQ_INT(u.total, 70000);
    memset(&u, 0, sizeof(u));
    CHECK(aor_usage_from_fragment(cut, strlen(cut), &u) == 0); /* the object does not end in the piece */
    CHECK(aor_usage_from_fragment(quoted, strlen(quoted), &u) == 1);
    CHECK_EQ_INT(u.total, 4);
    CHECK(aor_usage_from_fragment("\"usage\":null", 12, &u) == 0);
    /* an escape as the piece's last byte inside a string: the scan stops at the end (found by fuzz_json) */
    {
        static const char esc[] = {'"', 'u', 's', 'a', 'g', 'e', '"', ':', '{', '"', '\\'};
        char *heap = malloc(sizeof(esc));
        memcpy(heap, esc, sizeof(esc));
        CHECK(aor_usage_from_fragment(heap, sizeof(esc), &u) == 0);
        free(heap);
    }
}

int main(void)
{
    test_fragment();
    test_json();
    test_sse_whole_and_split();
    test_sse_oversized_line();
    return aor_test_done("test_usage");
}
