/* test_cred_token.c — token endpoint answers and the refresh schedule (auth/cred_token.c) */
#include <stdlib.h>
#include "cred_token.h"
#include "test.h"

static char tok[AOR_CRED_MAX_TOKEN + 1];

static int parse(const char *body, int64_t now_ms, struct aor_cred_response *r)
{
    return aor_cred_parse_response(body, strlen(body), now_ms, tok, sizeof(tok), r);
}

static void test_answers(void)
{
    struct aor_cred_response r;

    /* IMDS: every number is a string */
    CHECK_EQ_INT(parse("{\"access_token\":\"eyJ0.eyJ1.sig\",\"client_id\":\"c\",\"expires_in\":\"86399\",\"expires_on\":\"1\","
                       "\"resource\":\"https://cognitiveservices.azure.com\",\"token_type\":\"Bearer\"}",
                       0, &r),
                 0);
    CHECK_EQ_STR(tok, "eyJ0.eyJ1.sig");
    CHECK_EQ_INT(r.token_len, 13);
    CHECK_EQ_INT(r.lifetime_ms, 86399000);
    CHECK_EQ_INT(r.refresh_in_ms, -1);
    /* Entra v2.0: numbers, refresh_in honoured when shorter than the lifetime */
    CHECK_EQ_INT(
        parse("{\"token_type\":\"Bearer\",\"expires_in\":3599,\"ext_expires_in\":3599,\"refresh_in\":1799,\"access_token\":\"a\"}",
              0, &r),
        0);
    CHECK_EQ_INT(r.lifetime_ms, 3599000);
    CHECK_EQ_INT(r.refresh_in_ms, 1799000);
    CHECK_EQ_INT(parse("{\"expires_in\":60,\"refresh_in\":600,\"access_token\":\"a\"}", 0, &r), 0);
    CHECK_EQ_INT(r.refresh_in_ms, -1);
    /* App Service: only expires_on (unix seconds, a string), taken against the wall clock */
    CHECK_EQ_INT(parse("{\"access_token\":\"t\",\"expires_on\":\"1700003600\",\"token_type\":\"Bearer\"}", 1700000000000LL, &r), 0);
    CHECK_EQ_INT(r.lifetime_ms, 3600000);
    /* expires_in wins over expires_on (no clock agreement needed) */
    CHECK_EQ_INT(parse("{\"access_token\":\"t\",\"expires_in\":100,\"expires_on\":5}", 1700000000000LL, &r), 0);
    CHECK_EQ_INT(r.lifetime_ms, 100000);
    /* absurd lifetimes are cut to 24 h */
    CHECK_EQ_INT(parse("{\"access_token\":\"t\",\"expires_in\":1e300}", 0, &r), 0);
    CHECK_EQ_INT(r.lifetime_ms, AOR_CRED_MAX_LIFETIME_MS);
    CHECK_EQ_INT(parse("{\"access_token\":\"t\",\"expires_in\":\"99999999999999999999999999\"}", 0, &r), 0);
    CHECK_EQ_INT(r.lifetime_ms, AOR_CRED_MAX_LIFETIME_MS);
    CHECK_EQ_INT(parse("{\"access_token\":\"t\",\"expires_in\":9223372036854775807}", 0, &r), 0);
    CHECK_EQ_INT(r.lifetime_ms, AOR_CRED_MAX_LIFETIME_MS);
    /* unusable lifetimes */
    CHECK_EQ_INT(parse("{\"access_token\":\"t\",\"expires_in\":-5}", 0, &r), AOR_CRED_E_EXPIRY);
    CHECK_EQ_INT(parse("{\"access_token\":\"t\",\"expires_in\":0}", 0, &r), AOR_CRED_E_EXPIRY);
    CHECK_EQ_INT(parse("{\"access_token\":\"t\",\"expires_in\":0.5}", 0, &r), AOR_CRED_E_EXPIRY);
    CHECK_EQ_INT(parse("{\"access_token\":\"t\",\"expires_in\":\"-5\"}", 0, &r), AOR_CRED_E_EXPIRY);
    CHECK_EQ_INT(parse("{\"access_token\":\"t\",\"expires_in\":\"12a\"}", 0, &r), AOR_CRED_E_EXPIRY);
    CHECK_EQ_INT(parse("{\"access_token\":\"t\",\"expires_in\":null}", 0, &r), AOR_CRED_E_EXPIRY);
    CHECK_EQ_INT(parse("{\"access_token\":\"t\"}", 0, &r), AOR_CRED_E_EXPIRY);
    CHECK_EQ_INT(parse("{\"access_token\":\"t\",\"expires_on\":\"1\"}", 1700000000000LL, &r), AOR_CRED_E_EXPIRY);
    /* tokens that cannot go into a header as is */
    CHECK_EQ_INT(parse("{\"access_token\":\"a b\",\"expires_in\":60}", 0, &r), AOR_CRED_E_TOKEN);
    CHECK_EQ_INT(parse("{\"access_token\":\"a\\r\\nX-Evil: 1\",\"expires_in\":60}", 0, &r), AOR_CRED_E_TOKEN);
    CHECK(parse("{\"access_token\":\"a\\u0000b\",\"expires_in\":60}", 0, &r) < 0); /* jansson refuses NUL itself */
    CHECK_EQ_INT(parse("{\"access_token\":\"\\u00e9\",\"expires_in\":60}", 0, &r), AOR_CRED_E_TOKEN);
    CHECK_EQ_INT(parse("{\"access_token\":\"\",\"expires_in\":60}", 0, &r), AOR_CRED_E_TOKEN);
    CHECK_EQ_INT(parse("{\"access_token\":5,\"expires_in\":60}", 0, &r), AOR_CRED_E_TOKEN);
    CHECK_EQ_INT(parse("{\"access_token\":\"t\",\"expires_in\":60,\"token_type\":\"mac\"}", 0, &r), AOR_CRED_E_TYPE);
    CHECK_EQ_INT(parse("{\"access_token\":\"t\",\"expires_in\":60,\"token_type\":\"bearer\"}", 0, &r), 0);
    /* not JSON, not an object, duplicates, too deep */
    CHECK_EQ_INT(parse("not json", 0, &r), AOR_CRED_E_JSON);
    CHECK_EQ_INT(parse("[1]", 0, &r), AOR_CRED_E_JSON);
    CHECK_EQ_INT(parse("{\"access_token\":\"a\",\"access_token\":\"b\",\"expires_in\":60}", 0, &r), AOR_CRED_E_JSON);
    CHECK_EQ_INT(parse("{\"a\":[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]],\"access_token\":\"t\",\"expires_in\":60}", 0, &r),
                 AOR_CRED_E_JSON);
    CHECK_EQ_INT(aor_cred_parse_response("", 0, 0, tok, sizeof(tok), &r), AOR_CRED_E_JSON);
    CHECK_EQ_INT(aor_cred_parse_response(NULL, 0, 0, tok, sizeof(tok), &r), AOR_CRED_E_JSON);
    /* errors: the OAuth fields are kept (bounded, printable) for the log */
    CHECK_EQ_INT(
        parse("{\"error\":\"invalid_client\",\"error_description\":\"AADSTS7000215: Invalid client secret\\nprovided.\"}", 0, &r),
        AOR_CRED_E_TOKEN);
    CHECK_EQ_STR(r.error, "invalid_client");
    CHECK_EQ_STR(r.error_description, "AADSTS7000215: Invalid client secret?provided.");
    CHECK_EQ_INT(parse("{\"statusCode\":400,\"message\":\"No managed identity\"}", 0, &r), AOR_CRED_E_TOKEN);
    CHECK_EQ_STR(r.error_description, "No managed identity");
    CHECK_EQ_INT(parse("{\"error\":{\"code\":\"Forbidden\",\"message\":\"nope\"}}", 0, &r), AOR_CRED_E_TOKEN);
    CHECK_EQ_STR(r.error, "Forbidden");
    CHECK_EQ_STR(r.error_description, "nope");
    {
        /* limit and limit+1 */
        char *body = malloc(AOR_CRED_MAX_TOKEN + 64);
        int n = snprintf(body, 64, "{\"expires_in\":60,\"access_token\":\"");
        memset(body + n, 'a', AOR_CRED_MAX_TOKEN);
        strcpy(body + n + AOR_CRED_MAX_TOKEN, "\"}");
        CHECK_EQ_INT(parse(body, 0, &r), 0);
        CHECK_EQ_INT(r.token_len, AOR_CRED_MAX_TOKEN);
        memset(body + n, 'a', AOR_CRED_MAX_TOKEN + 1);
        strcpy(body + n + AOR_CRED_MAX_TOKEN + 1, "\"}");
        CHECK_EQ_INT(parse(body, 0, &r), AOR_CRED_E_TOKEN);
        free(body);
    }
    CHECK_EQ_INT(aor_cred_parse_response("{}", AOR_CRED_MAX_BODY + 1, 0, tok, sizeof(tok), &r), AOR_CRED_E_JSON);
}

static void test_schedule(void)
{
    /* an hour: refreshed when a third is left (40 min), sent until 10 s before the end */
    CHECK_EQ_INT(aor_cred_refresh_after_ms(3600000, -1), 2400000);
    CHECK_EQ_INT(aor_cred_send_margin_ms(3600000), 10000);
    /* 24 h: at 16 h */
    CHECK_EQ_INT(aor_cred_refresh_after_ms(86400000, -1), 57600000);
    /* 10 min: 5 min left beats a third */
    CHECK_EQ_INT(aor_cred_refresh_after_ms(600000, -1), 300000);
    /* 6 s: half-way, sent until 1 s before */
    CHECK_EQ_INT(aor_cred_refresh_after_ms(6000, -1), 3000);
    CHECK_EQ_INT(aor_cred_send_margin_ms(6000), 1000);
    /* refresh_in, when sooner */
    CHECK_EQ_INT(aor_cred_refresh_after_ms(3600000, 1800000), 1800000);
    CHECK_EQ_INT(aor_cred_refresh_after_ms(3600000, 3000000), 2400000);
    /* never sooner than a second after it came */
    CHECK_EQ_INT(aor_cred_refresh_after_ms(1000, -1), AOR_CRED_MIN_REFRESH_MS);
    /* a refresh_in of 1 ms or 1 s: no sooner than 30 s (review: identity), nor than the lifetime's point when that is sooner */
    CHECK_EQ_INT(aor_cred_refresh_after_ms(3600000, 1), AOR_CRED_REFRESH_IN_FLOOR_MS);
    CHECK_EQ_INT(aor_cred_refresh_after_ms(3600000, 1000), AOR_CRED_REFRESH_IN_FLOOR_MS);
    CHECK_EQ_INT(aor_cred_refresh_after_ms(3600000, 45000), 45000);
    CHECK_EQ_INT(aor_cred_refresh_after_ms(6000, 1000), 3000);
    /* backoff: doubling with equal jitter, capped */
    for (unsigned f = 1; f != 40; ++f) {
        int64_t lo = aor_cred_backoff_ms(f, 0), hi = aor_cred_backoff_ms(f, 0xffffffffu), cap = AOR_CRED_BACKOFF_MIN_MS;
        for (unsigned i = 1; i < f && cap < AOR_CRED_BACKOFF_MAX_MS; ++i)
            cap *= 2;
        if (cap > AOR_CRED_BACKOFF_MAX_MS)
            cap = AOR_CRED_BACKOFF_MAX_MS;
        CHECK(lo >= cap / 2 && hi <= cap && lo <= hi);
    }
    CHECK_EQ_INT(aor_cred_backoff_ms(1, 0), AOR_CRED_BACKOFF_MIN_MS / 2);
    CHECK(aor_cred_backoff_ms(100, 12345) <= AOR_CRED_BACKOFF_MAX_MS);
}

int main(void)
{
    test_answers();
    test_schedule();
    return aor_test_done("cred_token");
}
