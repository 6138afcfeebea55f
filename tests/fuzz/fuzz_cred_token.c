/* libFuzzer driver: a token endpoint's answer (IMDS, App Service, Entra ID, an external IdP) through
 * aor_cred_parse_response. An accepted token must be header-safe and its lifetime within bounds.
 * With -DAOR_FUZZ_MAIN any compiler builds a main() that replays the files named on the command line. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cred_token.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char tok[AOR_CRED_MAX_TOKEN + 1];
    struct aor_cred_response r;

    if (aor_cred_parse_response((const char *)data, size, INT64_C(1700000000000), tok, sizeof(tok), &r) == 0) {
        if (!aor_cred_token_ok(tok, r.token_len) || strlen(tok) != r.token_len || r.lifetime_ms < AOR_CRED_MIN_LIFETIME_MS ||
            r.lifetime_ms > AOR_CRED_MAX_LIFETIME_MS ||
            (r.refresh_in_ms != -1 && (r.refresh_in_ms <= 0 || r.refresh_in_ms >= r.lifetime_ms)))
            abort();
        int64_t after = aor_cred_refresh_after_ms(r.lifetime_ms, r.refresh_in_ms);
        if (after < AOR_CRED_MIN_REFRESH_MS || (after > r.lifetime_ms && after != AOR_CRED_MIN_REFRESH_MS))
            abort();
    }
    if (strnlen(r.error, sizeof(r.error)) == sizeof(r.error) ||
        strnlen(r.error_description, sizeof(r.error_description)) == sizeof(r.error_description))
        abort();
    return 0;
}

#ifdef AOR_FUZZ_MAIN
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
    printf("fuzz_cred_token: %d inputs replayed\n", argc - 1);
    return 0;
}
#endif
