/* cred_token.c — see cred_token.h. */
#include <math.h>
#include <string.h>
#include <strings.h>
#include <jansson.h>
#include "cred_token.h"
#include "jwk.h"

#define RESPONSE_DEPTH 8 /* token answers are flat; App Service and Entra errors nest one level */

int aor_cred_token_ok(const char *s, size_t len)
{
    size_t i;

    if (s == NULL || len == 0 || len > AOR_CRED_MAX_TOKEN)
        return 0;
    for (i = 0; i != len; ++i)
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
            return 0;
    return 1;
}

static void printable_copy(const char *s, size_t len, char *buf, size_t cap)
{
    size_t i, n = 0;

    for (i = 0; i != len && n + 1 < cap; ++i)
        buf[n++] = (unsigned char)s[i] >= 0x20 && (unsigned char)s[i] < 0x7f ? s[i] : '?';
    if (i != len && n >= 3)
        memcpy(buf + n - 3, "...", 3);
    buf[n] = '\0';
}

/*
 * A number of seconds as JSON: an integer, a real or a string of decimal digits (IMDS sends
 * strings). Returns 0 with *ms set (saturated at INT64_MAX / 4), or -1 when absent, negative
 * or not a number.
 */
static int seconds_of(json_t *v, int64_t *ms)
{
    double d;

    if (json_is_integer(v)) {
        json_int_t n = json_integer_value(v);
        if (n < 0)
            return -1;
        *ms = n > INT64_MAX / 4000 ? INT64_MAX / 4 : (int64_t)n * 1000;
        return 0;
    }
    if (json_is_real(v)) {
        d = json_real_value(v);
        if (!(d >= 0) || isinf(d))
            return -1;
        *ms = d > (double)(INT64_MAX / 4000) ? INT64_MAX / 4 : (int64_t)(d * 1000);
        return 0;
    }
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        size_t i, len = json_string_length(v);
        int64_t n = 0;
        if (len == 0 || len > 30)
            return -1;
        for (i = 0; i != len; ++i) {
            if (s[i] < '0' || s[i] > '9')
                return -1;
            if (n < INT64_MAX / 40000)
                n = n * 10 + (s[i] - '0');
        }
        *ms = n >= INT64_MAX / 40000 ? INT64_MAX / 4 : n * 1000;
        return 0;
    }
    return -1;
}

static void copy_error_fields(json_t *doc, struct aor_cred_response *out)
{
    json_t *v = json_object_get(doc, "error"), *d = json_object_get(doc, "error_description");

    if (json_is_object(v)) { /* {"error":{"code":..,"message":..}} (App Service, some proxies) */
        d = json_object_get(v, "message");
        v = json_object_get(v, "code");
    }
    if (d == NULL)
        d = json_object_get(doc, "message");
    if (json_is_string(v))
        printable_copy(json_string_value(v), json_string_length(v), out->error, sizeof(out->error));
    if (json_is_string(d))
        printable_copy(json_string_value(d), json_string_length(d), out->error_description, sizeof(out->error_description));
}

int aor_cred_parse_response(const char *body, size_t len, int64_t now_wall_ms, char *tok, size_t cap, struct aor_cred_response *out)
{
    json_t *doc = NULL, *v;
    json_error_t jerr;
    int64_t ms;
    int rc = AOR_CRED_E_JSON;

    memset(out, 0, sizeof(*out));
    out->refresh_in_ms = -1;
    if (tok != NULL && cap != 0)
        tok[0] = '\0';
    if (body == NULL || len == 0 || len > AOR_CRED_MAX_BODY || !aor_jwk_json_depth_ok(body, len, RESPONSE_DEPTH) ||
        (doc = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr)) == NULL || !json_is_object(doc))
        goto exit;
    copy_error_fields(doc, out);
    v = json_object_get(doc, "access_token");
    rc = AOR_CRED_E_TOKEN;
    if (!json_is_string(v) || tok == NULL || json_string_length(v) + 1 > cap ||
        !aor_cred_token_ok(json_string_value(v), json_string_length(v)))
        goto exit;
    v = json_object_get(doc, "token_type");
    rc = AOR_CRED_E_TYPE;
    if (v != NULL && !(json_is_string(v) && strcasecmp(json_string_value(v), "bearer") == 0))
        goto exit;
    rc = AOR_CRED_E_EXPIRY;
    if (seconds_of(json_object_get(doc, "expires_in"), &ms) == 0) {
        out->lifetime_ms = ms;
    } else if (seconds_of(json_object_get(doc, "expires_on"), &ms) == 0) {
        out->lifetime_ms = ms - now_wall_ms;
    } else {
        goto exit;
    }
    if (out->lifetime_ms < AOR_CRED_MIN_LIFETIME_MS)
        goto exit;
    if (out->lifetime_ms > AOR_CRED_MAX_LIFETIME_MS)
        out->lifetime_ms = AOR_CRED_MAX_LIFETIME_MS;
    if (seconds_of(json_object_get(doc, "refresh_in"), &ms) == 0 && ms > 0 && ms < out->lifetime_ms)
        out->refresh_in_ms = ms;
    v = json_object_get(doc, "access_token");
    out->token_len = json_string_length(v);
    memcpy(tok, json_string_value(v), out->token_len + 1);
    rc = 0;
exit:
    if (doc != NULL) {
        /* jansson keeps its own copy of the token: wipe it before the document goes */
        v = json_object_get(doc, "access_token");
        if (json_is_string(v))
            memset((char *)json_string_value(v), 0, json_string_length(v));
        json_decref(doc);
    }
    return rc;
}

const char *aor_cred_parse_error(int code)
{
    switch (code) {
    case AOR_CRED_E_JSON:
        return "the answer is not a JSON object";
    case AOR_CRED_E_TOKEN:
        return "no usable access_token";
    case AOR_CRED_E_EXPIRY:
        return "no usable expires_in/expires_on";
    case AOR_CRED_E_TYPE:
        return "token_type is not Bearer";
    default:
        return "unusable answer";
    }
}

int64_t aor_cred_refresh_after_ms(int64_t lifetime_ms, int64_t refresh_in_ms)
{
    int64_t ahead = lifetime_ms / 3, five = 5 * 60 * 1000, delay;

    if (five > lifetime_ms / 2)
        five = lifetime_ms / 2;
    if (five > ahead)
        ahead = five;
    delay = lifetime_ms - ahead;
    if (refresh_in_ms > 0 && refresh_in_ms < delay) {
        int64_t floor = delay < AOR_CRED_REFRESH_IN_FLOOR_MS ? delay : AOR_CRED_REFRESH_IN_FLOOR_MS;
        delay = refresh_in_ms > floor ? refresh_in_ms : floor;
    }
    return delay < AOR_CRED_MIN_REFRESH_MS ? AOR_CRED_MIN_REFRESH_MS : delay;
}

int64_t aor_cred_send_margin_ms(int64_t lifetime_ms)
{
    int64_t m = lifetime_ms / 6;
    return m > 10000 ? 10000 : m;
}

int64_t aor_cred_backoff_ms(unsigned failures, uint32_t rnd)
{
    int64_t d = AOR_CRED_BACKOFF_MIN_MS;
    unsigned i;

    for (i = 1; i < failures && d < AOR_CRED_BACKOFF_MAX_MS; ++i)
        d *= 2;
    if (d > AOR_CRED_BACKOFF_MAX_MS)
        d = AOR_CRED_BACKOFF_MAX_MS;
    /* equal jitter: half fixed, half random, so replicas that failed together spread out */
    return d / 2 + (int64_t)(rnd % (uint32_t)(d / 2 + 1));
}
