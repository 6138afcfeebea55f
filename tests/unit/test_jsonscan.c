/* unit tests for router/jsonscan.c and router/reqbody.c */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "jsonscan.h"
#include "reqbody.h"
#include "test.h"

static int count_cb(const char *key, size_t key_len, const char *value, size_t value_len, void *data)
{
    ++*(int *)data;
    return 0;
}

static int valid(const char *s)
{
    int n = 0;
    return aor_json_scan_object(s, strlen(s), count_cb, &n) == 0;
}

static void test_grammar(void)
{
    CHECK(valid("{}"));
    CHECK(valid(" { } \n"));
    CHECK(valid("{\"a\":1,\"b\":[1,2,{\"c\":null}],\"d\":\"x\\\"y\\u00e9\",\"e\":-1.5e+3,\"f\":true,\"g\":false}"));
    CHECK(!valid(""));
    CHECK(!valid("[]"));
    CHECK(!valid("{"));
    CHECK(!valid("{\"a\"}"));
    CHECK(!valid("{\"a\":}"));
    CHECK(!valid("{\"a\":1,}"));
    CHECK(!valid("{\"a\":1} x"));
    CHECK(!valid("{\"a\":01}"));
    CHECK(!valid("{\"a\":1.}"));
    CHECK(!valid("{\"a\":-}"));
    CHECK(!valid("{\"a\":tru}"));
    CHECK(!valid("{\"a\":\"\\x\"}"));
    CHECK(!valid("{\"a\":\"\\u12g4\"}"));
    CHECK(!valid("{\"a\":\"line\nbreak\"}"));
    CHECK(!valid("{a:1}"));
    CHECK(!valid("{\"a\":[1 2]}"));
    CHECK(!valid("{\"a\":\"unterminated}"));
}

static void test_depth(void)
{
    /* the top-level object is depth 1: 63 more levels are allowed, 64 are one too many */
    char doc[512];
    int levels, i;

    for (levels = 63; levels <= 64; ++levels) {
        size_t n = 0;
        n += (size_t)sprintf(doc + n, "{\"a\":");
        for (i = 0; i != levels; ++i)
            doc[n++] = '[';
        for (i = 0; i != levels; ++i)
            doc[n++] = ']';
        doc[n++] = '}';
        doc[n] = '\0';
        CHECK_EQ_INT(valid(doc), levels == 63);
    }
}

static void test_reqbody(void)
{
    struct aor_reqbody rb;
    const char *b1 =
        "{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream\":true,\"max_tokens\":100}";
    const char *b2 = "{\"model\":\"a\",\"model\":\"b\"}";
    const char *b3 = "{\"stream\":false,\"stream\":true}";
    const char *b4 = "{\"model\":\"gpt\\u002d4o\",\"max_tokens\":5,\"max_completion_tokens\":7}";

    CHECK_EQ_INT(aor_reqbody_scan(b1, strlen(b1), &rb), 0);
    CHECK(rb.model_len == 6 && memcmp(rb.model, "gpt-4o", 6) == 0);
    CHECK_EQ_INT(rb.stream, 1);
    CHECK_EQ_INT(rb.max_tokens, 100);
    CHECK_EQ_INT(aor_reqbody_estimate(&rb, 400), 200);
    CHECK_EQ_INT(aor_reqbody_scan(b2, strlen(b2), &rb), -1); /* smuggling: two models */
    CHECK_EQ_INT(aor_reqbody_scan(b3, strlen(b3), &rb), -1);
    CHECK_EQ_INT(aor_reqbody_scan(b4, strlen(b4), &rb), 0);
    CHECK(rb.model == NULL && rb.model_value != NULL); /* escaped: not a plain name */
    CHECK_EQ_INT(rb.max_tokens, 7);
    CHECK_EQ_INT(aor_reqbody_scan("{\"stream\":\"true\"}", 17, &rb), 0);
    CHECK_EQ_INT(rb.stream, 0);
    CHECK_EQ_INT(aor_reqbody_scan("not json", 8, &rb), -1);
}

#define S(x) x, strlen(x)

/* the tenant's default_max_tokens joins the quota estimate of a text-generating request without a limit */
static void test_default_completion(void)
{
    struct aor_reqbody rb;
    static const char *const bodies[] = {"{\"messages\":[]}",     "{\"max_tokens\":0}",       "{\"max_tokens\":-5}",
                                         "{\"max_tokens\":null}", "{\"max_tokens\":\"100\"}", "{\"max_output_tokens\":1.5}"};
    size_t i;

    for (i = 0; i != sizeof(bodies) / sizeof(bodies[0]); ++i) {
        CHECK_EQ_INT(aor_reqbody_scan(bodies[i], strlen(bodies[i]), &rb), 0);
        CHECK_EQ_INT(aor_reqbody_default_completion(&rb, S("chat/completions"), 800), 800); /* no usable limit named */
    }
    CHECK_EQ_INT(aor_reqbody_default_completion(&rb, S("completions"), 800), 800);
    CHECK_EQ_INT(aor_reqbody_default_completion(&rb, S("responses"), 800), 800);
    CHECK_EQ_INT(aor_reqbody_default_completion(&rb, S("embeddings"), 800), 0); /* nothing generated */
    CHECK_EQ_INT(aor_reqbody_default_completion(&rb, S("audio/speech"), 800), 0);
    CHECK_EQ_INT(aor_reqbody_default_completion(&rb, S("chat/completionsx"), 800), 0);
    CHECK_EQ_INT(aor_reqbody_default_completion(&rb, NULL, 0, 800), 0); /* a raw passthrough */
    CHECK_EQ_INT(aor_reqbody_default_completion(&rb, S("chat/completions"), 0), 0);
    CHECK_EQ_INT(aor_reqbody_scan("{\"max_tokens\":5}", 16, &rb), 0);
    CHECK_EQ_INT(aor_reqbody_default_completion(&rb, S("chat/completions"), 800), 0); /* the body's own limit */
    CHECK_EQ_INT(aor_reqbody_scan("{\"max_output_tokens\":1}", 23, &rb), 0);
    CHECK_EQ_INT(aor_reqbody_default_completion(&rb, S("responses"), 800), 0);
}

static void test_with_model(void)
{
    struct aor_reqbody rb;
    char buf[256];
    const char *b1 = "{\"messages\":[],\"model\":\"gpt-4o\",\"x\":1}";
    const char *b2 = " {\"messages\":[]}";
    const char *b3 = "{ }";
    int n;

    aor_reqbody_scan(b1, strlen(b1), &rb);
    n = aor_reqbody_with_model(b1, strlen(b1), &rb, "gpt4o-east", 10, buf, sizeof(buf));
    buf[n < 0 ? 0 : n] = '\0';
    CHECK_EQ_STR(buf, "{\"messages\":[],\"model\":\"gpt4o-east\",\"x\":1}");
    aor_reqbody_scan(b2, strlen(b2), &rb);
    n = aor_reqbody_with_model(b2, strlen(b2), &rb, "m", 1, buf, sizeof(buf));
    buf[n < 0 ? 0 : n] = '\0';
    CHECK_EQ_STR(buf, " {\"model\":\"m\",\"messages\":[]}");
    aor_reqbody_scan(b3, strlen(b3), &rb);
    n = aor_reqbody_with_model(b3, strlen(b3), &rb, "m", 1, buf, sizeof(buf));
    buf[n < 0 ? 0 : n] = '\0';
    CHECK_EQ_STR(buf, "{\"model\":\"m\" }");
    CHECK(valid(buf));
    /* too small a buffer is refused, not overrun */
    aor_reqbody_scan(b1, strlen(b1), &rb);
    CHECK_EQ_INT(aor_reqbody_with_model(b1, strlen(b1), &rb, "gpt4o-east", 10, buf, strlen(b1)), -1);
}

static void test_values(void)
{
    int64_t v;
    const char *s;
    size_t n;

    CHECK(aor_json_int("42", 2, &v) && v == 42);
    CHECK(aor_json_int("-7", 2, &v) && v == -7);
    CHECK(!aor_json_int("1.5", 3, &v));
    CHECK(!aor_json_int("1e3", 3, &v));
    CHECK(!aor_json_int("0123", 4, &v));
    CHECK(!aor_json_int("9999999999999999999", 19, &v));
    CHECK(aor_json_plain_string("\"abc\"", 5, &s, &n) && n == 3 && memcmp(s, "abc", 3) == 0);
    CHECK(!aor_json_plain_string("\"a\\nb\"", 6, &s, &n));
    CHECK(!aor_json_plain_string("12", 2, &s, &n));
}

/* the body rewritten to ask for usage, as a string (scanned first) */
static const char *with_usage(const char *body, char *buf, size_t cap)
{
    struct aor_reqbody rb, out, again;
    int n;

    if (aor_reqbody_scan(body, strlen(body), &rb) != 0)
        return "(scan refused)";
    n = aor_reqbody_with_stream_usage(body, strlen(body), &rb, buf, cap, &out);
    if (n < 0)
        return "(too small)";
    buf[n] = '\0';
    CHECK(n <= (int)strlen(body) + AOR_REQBODY_STREAM_USAGE_EXTRA);
    CHECK(aor_reqbody_scan(buf, (size_t)n, &again) == 0 && again.include_usage);
    CHECK(out.include_usage);
    /* the model span moved with the text */
    CHECK((rb.model_value == NULL) == (out.model_value == NULL));
    if (out.model_value != NULL)
        CHECK(out.model_value_len == again.model_value_len &&
              memcmp(out.model_value, again.model_value, out.model_value_len) == 0 &&
              out.model_value - buf == again.model_value - buf);
    return buf;
}

static void test_stream_usage(void)
{
    struct aor_reqbody rb;
    char buf[512];
    const char *b1 = "{\"stream\":true,\"messages\":[]}";
    const char *b2 = "{\"stream\":true,\"stream_options\":{\"include_usage\":true}}";
    const char *b3 = "{\"stream\":true,\"stream_options\":{\"include_usage\":false}}";
    const char *b4 = "{\"stream_options\":{},\"stream_options\":{\"include_usage\":true}}";

    CHECK_EQ_INT(aor_reqbody_scan(b1, strlen(b1), &rb), 0);
    CHECK(!rb.stream_options && !rb.include_usage);
    CHECK_EQ_STR(with_usage(b1, buf, sizeof(buf)), "{\"stream_options\":{\"include_usage\":true},\"stream\":true,\"messages\":[]}");
    CHECK_EQ_STR(with_usage("{ }", buf, sizeof(buf)), "{\"stream_options\":{\"include_usage\":true} }");
    CHECK_EQ_INT(aor_reqbody_with_stream_usage(b1, strlen(b1), &rb, buf, strlen(b1) + 10, NULL), -1);
    CHECK_EQ_INT(aor_reqbody_scan(b2, strlen(b2), &rb), 0);
    CHECK(rb.stream_options && rb.include_usage);
    CHECK_EQ_INT(aor_reqbody_scan(b3, strlen(b3), &rb), 0);
    CHECK(rb.stream_options && !rb.include_usage);
    CHECK_EQ_INT(aor_reqbody_scan(b4, strlen(b4), &rb), -1); /* twice: the backend might read the other */

    /* present without include_usage true: rewritten in place, other members kept */
    CHECK_EQ_STR(with_usage(b3, buf, sizeof(buf)), "{\"stream\":true,\"stream_options\":{\"include_usage\":true}}");
    CHECK_EQ_STR(with_usage("{\"model\":\"m\",\"stream_options\":{ \"include_usage\" : null },\"model2\":1}", buf, sizeof(buf)),
                 "{\"model\":\"m\",\"stream_options\":{ \"include_usage\" : true },\"model2\":1}");
    CHECK_EQ_STR(with_usage("{\"stream_options\":{},\"model\":\"m\"}", buf, sizeof(buf)),
                 "{\"stream_options\":{\"include_usage\":true},\"model\":\"m\"}");
    CHECK_EQ_STR(with_usage("{\"stream_options\":{ \n},\"model\":\"m\"}", buf, sizeof(buf)),
                 "{\"stream_options\":{\"include_usage\":true \n},\"model\":\"m\"}");
    CHECK_EQ_STR(with_usage("{\"stream_options\":null,\"model\":\"m\"}", buf, sizeof(buf)),
                 "{\"stream_options\":{\"include_usage\":true},\"model\":\"m\"}");
    CHECK_EQ_STR(with_usage("{\"model\":\"m\",\"stream_options\":{\"include_obfuscation\":false}}", buf, sizeof(buf)),
                 "{\"model\":\"m\",\"stream_options\":{\"include_usage\":true,\"include_obfuscation\":false}}");
    CHECK_EQ_STR(with_usage("{\"stream_options\":{\"x\":{\"include_usage\":false}}}", buf, sizeof(buf)),
                 "{\"stream_options\":{\"include_usage\":true,\"x\":{\"include_usage\":false}}}");

    /* what the router cannot read as the backend would: refused */
    static const char *const refused[] = {
        "{\"stream_options\":\"include_usage\"}",
        "{\"stream_options\":1}",
        "{\"stream_options\":[]}",
        "{\"stream_options\":[{\"include_usage\":true}]}",
        "{\"stream_options\":true}",
        "{\"stream_options\":false}",
        "{\"stream_options\":{\"include_usage\":true,\"include_usage\":false}}",
        "{\"stream_options\":{\"include_usage\":false,\"include_usage\":true}}",
        "{\"stream_options\":{\"include_\\u0075sage\":false}}",
        "{\"stream_options\":{\"include_usage\":true,\"include_\\u0075sage\":false}}",
        "{\"stream_options\":{\"x\\\"\":1}}",
        "{\"stream_options\":{\"include_usage\":\"true\"}}",
        "{\"stream_options\":{\"include_usage\":1}}",
        "{\"stream_options\":{\"include_usage\":{}}}",
        "{\"stream_options\":{\"include_usage\":[true]}}",
    };
    size_t i;
    for (i = 0; i != sizeof(refused) / sizeof(refused[0]); ++i) {
        CHECK_EQ_INT(aor_reqbody_scan(refused[i], strlen(refused[i]), &rb), -1);
        if (aor_reqbody_scan(refused[i], strlen(refused[i]), &rb) != -1)
            fprintf(stderr, "not refused: %s\n", refused[i]);
    }
}

int main(void)
{
    test_stream_usage();
    test_grammar();
    test_depth();
    test_reqbody();
    test_default_completion();
    test_with_model();
    test_values();
    return aor_test_done("test_jsonscan");
}
