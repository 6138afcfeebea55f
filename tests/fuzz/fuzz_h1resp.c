/*
 * libFuzzer driver for router/h1resp.c: a backend's response as it arrives in pieces.
 * The first byte: bit 0 the request was a HEAD, bits 1-7 the size of each read (1..128);
 * the rest is what the backend sent. The head is parsed as the reads accumulate (interim
 * heads dropped), then the body is stepped through read by read. Checked: the parser never
 * takes more than it was given, a body never yields more bytes than it was given, a refused
 * head says why, and a head is never taken past its 64 KiB bound.
 * Seed corpus: tests/fuzz/corpus/h1resp/. Build with clang -fsanitize=fuzzer; with
 * -DAOR_FUZZ_MAIN any compiler builds a main() that runs the files named on the command
 * line once (a regression run).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "h1resp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct aor_h1resp_parser p = {0, 0};
    struct aor_h1resp_head h;
    size_t piece, have = 0, at = 0, taken_total = 0;
    int is_head, in_body = 0;
    char *buf;

    if (size < 1)
        return 0;
    is_head = data[0] & 1;
    piece = (size_t)(data[0] >> 1) + 1;
    ++data;
    --size;
    if ((buf = malloc(size + 1)) == NULL)
        return 0;
    while (at < size) {
        size_t n = size - at < piece ? size - at : piece;
        memcpy(buf + have, data + at, n); /* a read appends to what is not taken yet */
        have += n;
        at += n;
        while (have != 0) {
            if (!in_body) {
                ssize_t r = aor_h1resp_parse_head(&p, buf, have, is_head, &h);
                if (r < 0) {
                    if (h.error == NULL)
                        abort();
                    goto Done;
                }
                if (r == 0) {
                    if (p.interim + have > AOR_H1RESP_MAX_HEAD_BYTES)
                        abort();
                    break;
                }
                if ((size_t)r > have || h.num_headers > AOR_H1RESP_MAX_HEADERS)
                    abort();
                taken_total += (size_t)r;
                if (p.interim + (h.status >= 200 ? (size_t)r : 0) > AOR_H1RESP_MAX_HEAD_BYTES)
                    abort();
                memmove(buf, buf + r, have - (size_t)r);
                have -= (size_t)r;
                if (h.status >= 200)
                    in_body = 1;
            } else {
                size_t data_len, extra;
                int r = aor_h1resp_body_step(&h.body, buf, have, &data_len, &extra);
                if (r < 0)
                    goto Done;
                if (data_len > have || extra > have || data_len + extra > have)
                    abort();
                have = 0; /* the step takes everything */
                if (r == 1)
                    goto Done;
            }
        }
    }
Done:
    (void)taken_total;
    free(buf);
    return 0;
}

#ifdef AOR_FUZZ_MAIN
/* regression run without libFuzzer: each argument is one input file */
int main(int argc, char **argv)
{
    static uint8_t buf[1 << 20];
    int i;

    for (i = 1; i < argc; ++i) {
        FILE *f = fopen(argv[i], "rb");
        size_t n;
        if (f == NULL) {
            perror(argv[i]);
            return 1;
        }
        n = fread(buf, 1, sizeof(buf), f);
        fclose(f);
        LLVMFuzzerTestOneInput(buf, n);
    }
    printf("fuzz_h1resp: %d inputs\n", argc - 1);
    return 0;
}
#endif
