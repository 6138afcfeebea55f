/*
 * usage — token counts from what the backend answered: the `usage` object of a JSON
 * reply, or of the SSE event that carries it in a stream (stream_options.include_usage).
 * Pure, fuzzable.
 */
#ifndef AOR_USAGE_H
#define AOR_USAGE_H

#include <stddef.h>
#include <stdint.h>

struct aor_usage {
    int64_t prompt, completion, total;
    int found;
};

/* reads `usage` from a JSON document (a reply or one SSE event). Returns 1 when found */
int aor_usage_from_json(const char *json, size_t len, struct aor_usage *u);

/*
 * Finds the last complete `"usage":{...}` object in a piece of a JSON reply (the beginning or
 * the end of one too large to hold whole). The piece need not parse as a whole; the object
 * found must. Returns 1 and sets *u when found.
 */
int aor_usage_from_fragment(const char *s, size_t len, struct aor_usage *u);
#define AOR_USAGE_TAIL 65536 /* bytes of a large reply's end kept to find its usage */

#define AOR_SSE_MAX_LINE 65536

/* Splits a byte stream into SSE lines and keeps the last `usage` it saw.
 * Lines longer than AOR_SSE_MAX_LINE are skipped (counted in `oversized`), never buffered whole. */
struct aor_sse_scanner {
    char *line; /* malloc'd on first use, AOR_SSE_MAX_LINE bytes */
    size_t len;
    int skipping;
    unsigned oversized;
    int done;               /* saw "data: [DONE]" */
    int64_t content_events; /* events carrying generated text (a token each, at least): the estimate of a cut stream */
    struct aor_usage usage;
};

void aor_sse_feed(struct aor_sse_scanner *s, const char *bytes, size_t len);
void aor_sse_dispose(struct aor_sse_scanner *s);

#endif
