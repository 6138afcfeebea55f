/* libFuzzer driver: untrusted bytes through jsonscan, reqbody (model and include_usage rewrites),
 * usage (whole replies and fragments of large ones) and the SSE scanner.
 * The first byte picks a split point for the SSE stream so chunk boundaries are fuzzed too. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "jsonscan.h"
#include "reqbody.h"
#include "usage.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct aor_reqbody rb;
    struct aor_usage u = {0, 0, 0, 0};
    struct aor_sse_scanner sse;
    size_t split;

    if (size == 0)
        return 0;
    split = data[0] % size;
    ++data, --size;
    if (aor_reqbody_scan((const char *)data, size, &rb) == 0) {
        size_t cap = size + 64;
        char *buf = malloc(cap);
        int n = aor_reqbody_with_model((const char *)data, size, &rb, "deployment-x", 12, buf, cap);
        /* the rewritten body must still be a well-formed object naming the new model */
        struct aor_reqbody again;
        if (n < 0 || aor_reqbody_scan(buf, (size_t)n, &again) != 0 || again.model_len != 12 ||
            memcmp(again.model, "deployment-x", 12) != 0)
            abort();
        free(buf);
        if (!rb.include_usage) {
            /* the include_usage rewrite keeps the body an object, makes the scan see it, and
             * keeps the model span where a second scan finds it */
            struct aor_reqbody moved;
            cap = size + AOR_REQBODY_STREAM_USAGE_EXTRA;
            buf = malloc(cap);
            n = aor_reqbody_with_stream_usage((const char *)data, size, &rb, buf, cap, &moved);
            if (n < 0 || aor_reqbody_scan(buf, (size_t)n, &again) != 0 || !again.include_usage ||
                moved.model_value != again.model_value || moved.model_value_len != again.model_value_len)
                abort();
            free(buf);
        }
    }
    aor_usage_from_json((const char *)data, size, &u);
    aor_usage_from_fragment((const char *)data, size, &u);
    memset(&sse, 0, sizeof(sse));
    if (split > size)
        split = size;
    aor_sse_feed(&sse, (const char *)data, split);
    aor_sse_feed(&sse, (const char *)data + split, size - split);
    aor_sse_dispose(&sse);
    return 0;
}
