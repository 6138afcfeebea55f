/*
 * jwks.c — see jwks.h.
 *
 * Threads: a keystore's identity is immutable; `lock` guards the current set, last_error and
 * `running` (whether the async handle may be signalled); counters and the few flags other
 * threads touch are atomics; everything under `f` belongs to the fetch loop's thread.
 *
 * Fetch schedule (all on the fetch loop): one uv timer per keystore fires at `next_due` — the
 * periodic refresh after a success (Cache-Control max-age clamped, else hourly) or the backoff
 * after a failure. A refetch request (an unknown kid) brings the due time forward to the end
 * of the cooldown since the last fetch started; a fetch in flight absorbs it. A discovery
 * issuer re-reads its discovery document on periodic fetches and after failures, and goes
 * straight to the known jwks_uri on refetches.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <curl/curl.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <uv.h>
#include "config.h"
#include "jwk.h"
#include "jwks.h"
#include "jwt.h"
#include "log.h"
#include "upstream.h"

#ifndef AOR_VERSION
#define AOR_VERSION "dev"
#endif

#define DISCOVERY_DEPTH 16 /* discovery documents hold arrays and a few small objects */
#define LOG_ISSUER_MAX 200 /* characters of an issuer or URL quoted in a log line */

const char aor_keystore_err_transport[] = "transport error";
const char aor_keystore_err_http_status[] = "unexpected HTTP status";
const char aor_keystore_err_too_large[] = "response too large";
const char aor_keystore_err_discovery[] = "unusable discovery document";
const char aor_keystore_err_issuer_mismatch[] = "discovery names another issuer";
const char aor_keystore_err_jwks[] = "unusable JWKS";
const char aor_keystore_err_file[] = "jwks_file unreadable";
const char aor_keystore_err_nomem[] = "out of memory";

enum kind { KIND_SECRET, KIND_FILE, KIND_URI, KIND_DISCOVERY };
enum stage { STAGE_DISCOVERY, STAGE_JWKS };

struct aor_keystore {
    /* identity: immutable after create */
    enum kind kind;
    char *issuer;
    char *location; /* openid_config, jwks_uri or jwks_file; NULL for a secret */
    unsigned char secret_digest[32];
    struct aor_keystore *reg_next; /* registry list (under reg.lock) */

    pthread_mutex_t lock;
    struct aor_jwks *current; /* under lock */
    const char *last_error;   /* under lock */
    int running;              /* under lock: f.async is open */

    atomic_int refetch_flag; /* a refetch was asked for and f.async signalled */
    atomic_int force_flag;   /* a reload asked for a fetch now, whatever the cooldown */
    atomic_int wanted;       /* the current config names this keystore */
    atomic_uint cooldown_s;
    atomic_uint refresh_s;
    _Atomic uint64_t fetches, failures, updates;

    /* the fetch loop's thread only */
    struct {
        uv_loop_t *loop;
        struct aor_upstream *up;
        uv_async_t async;
        uv_timer_t timer;
        int started, stopping, open_handles;
        struct aor_upstream_xfer xfer;
        enum stage stage;
        char *body;
        size_t len, cap;
        int over_limit;
        int64_t max_age; /* from the response being received, -1 if none */
        int no_cache;
        char *jwks_uri; /* discovered (KIND_DISCOVERY) */
        int rediscover;
        int ever_started;
        uint64_t last_start; /* uv_now of the last fetch start */
        uint64_t next_due;   /* uv_now when the next periodic/backoff fetch is due */
        uint64_t backoff_ms;
        int refetch_wanted;
        int force_wanted; /* taken from force_flag: fetch as soon as no fetch is in flight */
        char errbuf[CURL_ERROR_SIZE];
    } f;
};

static void evaluate(struct aor_keystore *ks);

/* ---- small helpers ---------------------------------------------------------------------- */

/* a printable, bounded copy of untrusted or long text for a log line */
static const char *printable(const char *s, size_t len, char *buf, size_t cap)
{
    size_t i, n = 0;

    for (i = 0; i != len && n + 1 < cap; ++i)
        buf[n++] = (unsigned char)s[i] >= 0x20 && (unsigned char)s[i] < 0x7f ? s[i] : '?';
    if (i != len && n >= 3)
        memcpy(buf + n - 3, "...", 3);
    buf[n] = '\0';
    return buf;
}

static const char *loggable(const char *s, char *buf)
{
    return printable(s, strlen(s), buf, LOG_ISSUER_MAX + 1);
}

static int sha256(const void *data, size_t len, unsigned char out[32])
{
    unsigned int n = 0;
    return EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) == 1 && n == 32 ? 0 : -1;
}

static size_t b64url_encode(const unsigned char *in, size_t len, char *out)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t i, n = 0;

    for (i = 0; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[n++] = abc[v >> 18];
        out[n++] = abc[(v >> 12) & 63];
        out[n++] = abc[(v >> 6) & 63];
        out[n++] = abc[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[n++] = abc[v >> 18];
        out[n++] = abc[(v >> 12) & 63];
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[n++] = abc[v >> 18];
        out[n++] = abc[(v >> 12) & 63];
        out[n++] = abc[(v >> 6) & 63];
    }
    return n;
}

static enum kind kind_of(const struct aor_jwt_issuer_conf *ic)
{
    return ic->secret != NULL ? KIND_SECRET : ic->jwks_file != NULL ? KIND_FILE : ic->jwks_uri != NULL ? KIND_URI : KIND_DISCOVERY;
}

static const char *location_of(const struct aor_jwt_issuer_conf *ic)
{
    switch (kind_of(ic)) {
    case KIND_FILE:
        return ic->jwks_file;
    case KIND_URI:
        return ic->jwks_uri;
    case KIND_DISCOVERY:
        return ic->openid_config;
    default:
        return NULL;
    }
}

static size_t set_size(const struct aor_jwks *set)
{
    return set != NULL ? aor_jwks_count(set) : 0;
}

static void set_error(struct aor_keystore *ks, const char *err)
{
    pthread_mutex_lock(&ks->lock);
    ks->last_error = err;
    pthread_mutex_unlock(&ks->lock);
}

/* installs `set` (its reference moves to the keystore) and logs what it holds */
static void install(struct aor_keystore *ks, struct aor_jwks *set, const struct aor_jwks_stats *st, const char *from)
{
    struct aor_jwks *old;
    char kids[256], ib[LOG_ISSUER_MAX + 1], fb[LOG_ISSUER_MAX + 1];
    size_t i, n = 0, count = aor_jwks_count(set);
    int changed;

    kids[0] = '\0';
    for (i = 0; i != count && n < sizeof(kids) - 1; ++i) {
        const char *kid = aor_jwk_kid(aor_jwks_get(set, i));
        int w = snprintf(kids + n, sizeof(kids) - n, "%s%s", i != 0 ? "," : "", kid != NULL ? kid : "(none)");
        if (w < 0)
            break;
        n += (size_t)w;
    }
    if (n >= sizeof(kids) - 1) /* (probably) truncated: say so */
        memcpy(kids + sizeof(kids) - 4, "...", 4);

    pthread_mutex_lock(&ks->lock);
    old = ks->current;
    ks->current = set;
    ks->last_error = NULL;
    pthread_mutex_unlock(&ks->lock);
    atomic_fetch_add(&ks->updates, 1);
    /* a refresh that changes nothing is only worth a debug line */
    changed = old == NULL || aor_jwks_count(old) != count;
    for (i = 0; i != count && !changed; ++i) {
        const char *kid = aor_jwk_kid(aor_jwks_get(set, i));
        changed = kid == NULL || aor_jwks_find_kid(old, kid, strlen(kid)) == NULL;
    }
    aor_jwks_release(old); /* readers still verifying with it hold their own reference */
    if (st != NULL)
        AOR_LOG(changed ? AOR_LOG_INFO : AOR_LOG_DEBUG, "jwks", "issuer %s: %zu keys from %s (kids %.*s; %u entries, %u skipped)",
                loggable(ks->issuer, ib), count, loggable(from, fb), (int)sizeof(kids),
                printable(kids, strlen(kids), kids, sizeof(kids)), st->entries, st->entries - st->usable);
    else
        AOR_LOG(AOR_LOG_INFO, "jwks", "issuer %s: shared secret loaded", loggable(ks->issuer, ib));
}

/* ---- secret and file keystores ---------------------------------------------------------- */

/* one kid-less "oct" key: it verifies each HS algorithm its length allows, the policy narrows */
static int load_secret(struct aor_keystore *ks, const char *secret)
{
    size_t len = strlen(secret), n;
    char doc[64 + (AOR_JWK_HMAC_MAX_SECRET + 2) / 3 * 4];
    struct aor_jwks *set = NULL;
    struct aor_jwks_stats st;
    int rc;

    if (len > AOR_JWK_HMAC_MAX_SECRET) {
        rc = AOR_JWKS_E_ARG;
    } else {
        n = (size_t)snprintf(doc, sizeof(doc), "{\"keys\":[{\"kty\":\"oct\",\"k\":\"");
        n += b64url_encode((const unsigned char *)secret, len, doc + n);
        memcpy(doc + n, "\"}]}", 4);
        rc = aor_jwks_parse(doc, n + 4, AOR_JWKS_ACCEPT_OCT, &set, &st);
        OPENSSL_cleanse(doc, sizeof(doc));
    }
    if (rc != 0) {
        char ib[LOG_ISSUER_MAX + 1];
        AOR_LOG(AOR_LOG_ERROR, "jwks", "issuer %s: the shared secret is not usable (%u bytes; 32 to %d)", loggable(ks->issuer, ib),
                (unsigned)len, AOR_JWK_HMAC_MAX_SECRET);
        set_error(ks, rc == AOR_JWKS_E_NOMEM ? aor_keystore_err_nomem : aor_keystore_err_jwks);
        return -1;
    }
    install(ks, set, NULL, NULL);
    return 0;
}

int aor_keystore_reload_file(struct aor_keystore *ks)
{
    char ib[LOG_ISSUER_MAX + 1], fb[LOG_ISSUER_MAX + 1];
    struct aor_jwks *set = NULL;
    struct aor_jwks_stats st;
    const char *err = NULL;
    char *buf = NULL;
    size_t len = 0;
    FILE *fp;
    int rc;

    if (ks->kind != KIND_FILE)
        return 0;
    if ((fp = fopen(ks->location, "rb")) == NULL) {
        err = aor_keystore_err_file;
    } else if ((buf = malloc(AOR_KEYSTORE_MAX_BODY + 1)) == NULL) {
        err = aor_keystore_err_nomem;
    } else {
        len = fread(buf, 1, AOR_KEYSTORE_MAX_BODY + 1, fp);
        if (ferror(fp))
            err = aor_keystore_err_file;
        else if (len > AOR_KEYSTORE_MAX_BODY)
            err = aor_keystore_err_too_large;
    }
    if (fp != NULL)
        fclose(fp);
    if (err == NULL && (rc = aor_jwks_parse(buf, len, 0, &set, &st)) != 0)
        err = rc == AOR_JWKS_E_NOMEM ? aor_keystore_err_nomem : aor_keystore_err_jwks;
    free(buf);
    if (err != NULL) {
        atomic_fetch_add(&ks->failures, 1);
        set_error(ks, err);
        AOR_LOG(AOR_LOG_ERROR, "jwks", "issuer %s: jwks_file %s: %s; %s", loggable(ks->issuer, ib), loggable(ks->location, fb), err,
                aor_keystore_ready(ks) ? "keeping the keys loaded before" : "no keys");
        return -1;
    }
    install(ks, set, &st, ks->location);
    return 0;
}

/* ---- create / destroy ------------------------------------------------------------------- */

static struct aor_keystore *create(const struct aor_jwt_issuer_conf *ic, int wanted)
{
    struct aor_keystore *ks;
    const char *loc;

    if (ic == NULL || ic->issuer == NULL ||
        (ic->secret == NULL && ic->jwks_file == NULL && ic->jwks_uri == NULL && ic->openid_config == NULL))
        return NULL;
    if ((ks = calloc(1, sizeof(*ks))) == NULL)
        return NULL;
    ks->kind = kind_of(ic);
    loc = location_of(ic);
    if ((ks->issuer = strdup(ic->issuer)) == NULL || (loc != NULL && (ks->location = strdup(loc)) == NULL) ||
        (ks->kind == KIND_SECRET && sha256(ic->secret, strlen(ic->secret), ks->secret_digest) != 0)) {
        free(ks->issuer);
        free(ks->location);
        free(ks);
        return NULL;
    }
    pthread_mutex_init(&ks->lock, NULL);
    atomic_init(&ks->refetch_flag, 0);
    atomic_init(&ks->force_flag, 0);
    atomic_init(&ks->wanted, wanted);
    atomic_init(&ks->cooldown_s, ic->jwks_refetch_cooldown_s);
    atomic_init(&ks->refresh_s, 0);
    atomic_init(&ks->fetches, 0);
    atomic_init(&ks->failures, 0);
    atomic_init(&ks->updates, 0);
    ks->f.backoff_ms = AOR_KEYSTORE_BACKOFF_MIN_MS;
    ks->f.next_due = 0; /* the first fetch is due at once */
    if (ks->kind == KIND_SECRET)
        load_secret(ks, ic->secret);
    else if (ks->kind == KIND_FILE)
        aor_keystore_reload_file(ks);
    return ks;
}

struct aor_keystore *aor_keystore_create(const struct aor_jwt_issuer_conf *ic)
{
    return create(ic, 1);
}

void aor_keystore_destroy(struct aor_keystore *ks)
{
    if (ks == NULL)
        return;
    if (ks->f.open_handles != 0) {
        /* freeing now would let libuv write into freed memory: leak instead, loudly */
        AOR_LOG(AOR_LOG_ERROR, "jwks", "keystore destroyed before its handles closed; leaking it");
        return;
    }
    aor_jwks_release(ks->current);
    pthread_mutex_destroy(&ks->lock);
    OPENSSL_cleanse(ks->secret_digest, sizeof(ks->secret_digest));
    free(ks->f.body);
    free(ks->f.jwks_uri);
    free(ks->issuer);
    free(ks->location);
    free(ks);
}

/* ---- readers ---------------------------------------------------------------------------- */

struct aor_jwks *aor_keystore_current(struct aor_keystore *ks)
{
    struct aor_jwks *set;

    pthread_mutex_lock(&ks->lock);
    if ((set = ks->current) != NULL)
        aor_jwks_retain(set);
    pthread_mutex_unlock(&ks->lock);
    return set;
}

int aor_keystore_ready(struct aor_keystore *ks)
{
    int ready;

    pthread_mutex_lock(&ks->lock);
    ready = ks->current != NULL;
    pthread_mutex_unlock(&ks->lock);
    return ready;
}

uint64_t aor_keystore_updates(const struct aor_keystore *ks)
{
    return atomic_load(&ks->updates);
}

uint64_t aor_keystore_fetch_count(const struct aor_keystore *ks)
{
    return atomic_load(&ks->fetches);
}

void aor_keystore_stats(struct aor_keystore *ks, struct aor_keystore_stats *st)
{
    pthread_mutex_lock(&ks->lock);
    st->ready = ks->current != NULL;
    st->keys = set_size(ks->current);
    st->last_error = ks->last_error;
    pthread_mutex_unlock(&ks->lock);
    st->fetches = atomic_load(&ks->fetches);
    st->failures = atomic_load(&ks->failures);
    st->updates = atomic_load(&ks->updates);
    st->refresh_s = atomic_load(&ks->refresh_s);
}

const char *aor_keystore_issuer(const struct aor_keystore *ks)
{
    return ks->issuer;
}

void aor_keystore_request_refetch(struct aor_keystore *ks)
{
    if (ks->kind == KIND_SECRET || ks->kind == KIND_FILE || !atomic_load(&ks->wanted))
        return;
    /* one signal until the loop has taken it: a flood costs an atomic exchange per request */
    if (atomic_exchange(&ks->refetch_flag, 1) != 0)
        return;
    pthread_mutex_lock(&ks->lock);
    if (ks->running)
        uv_async_send(&ks->f.async);
    pthread_mutex_unlock(&ks->lock);
}

/* ---- HTTP ------------------------------------------------------------------------------- */

/*
 * Cache-Control directives of one header value: max-age=N (token or quoted), no-cache and
 * no-store (both mean "refresh as often as we allow"). Unknown directives are ignored.
 */
static void parse_cache_control(const char *v, size_t len, int64_t *max_age, int *no_cache)
{
    size_t i = 0;

    while (i < len) {
        size_t start, end;
        while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            ++i;
        start = i;
        while (i < len && v[i] != ',')
            ++i;
        end = i;
        while (end > start && (v[end - 1] == ' ' || v[end - 1] == '\t' || v[end - 1] == '\r' || v[end - 1] == '\n'))
            --end;
        if (end - start > 8 && strncasecmp(v + start, "max-age=", 8) == 0) {
            size_t p = start + 8, q = end;
            int64_t n = 0;
            if (q - p >= 2 && v[p] == '"' && v[q - 1] == '"')
                ++p, --q;
            if (p == q)
                continue;
            for (; p != q; ++p) {
                if (v[p] < '0' || v[p] > '9')
                    break;
                if (n < INT64_C(1) << 40) /* saturate: anything this large is clamped anyway */
                    n = n * 10 + (v[p] - '0');
            }
            if (p == q)
                *max_age = n;
        } else if ((end - start == 8 && strncasecmp(v + start, "no-cache", 8) == 0) ||
                   (end - start == 8 && strncasecmp(v + start, "no-store", 8) == 0)) {
            *no_cache = 1;
        }
    }
}

static size_t on_header(char *data, size_t size, size_t n, void *arg)
{
    struct aor_keystore *ks = arg;
    size_t len = size * n;
    static const char name[] = "cache-control:";

    /* a new status line (after 1xx): the previous response's headers do not count */
    if (len >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        ks->f.max_age = -1;
        ks->f.no_cache = 0;
    } else if (len > sizeof(name) - 1 && strncasecmp(data, name, sizeof(name) - 1) == 0) {
        parse_cache_control(data + sizeof(name) - 1, len - (sizeof(name) - 1), &ks->f.max_age, &ks->f.no_cache);
    }
    return len;
}

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
    struct aor_keystore *ks = arg;
    size_t len = size * n;

    if (len > AOR_KEYSTORE_MAX_BODY - ks->f.len) {
        ks->f.over_limit = 1;
        return 0; /* aborts the transfer */
    }
    if (ks->f.len + len > ks->f.cap) {
        size_t cap = ks->f.cap != 0 ? ks->f.cap : 16 * 1024;
        char *p;
        while (cap < ks->f.len + len)
            cap *= 2;
        if (cap > AOR_KEYSTORE_MAX_BODY)
            cap = AOR_KEYSTORE_MAX_BODY;
        if ((p = realloc(ks->f.body, cap)) == NULL)
            return 0;
        ks->f.body = p;
        ks->f.cap = cap;
    }
    memcpy(ks->f.body + ks->f.len, data, len);
    ks->f.len += len;
    return len;
}

static void on_fetch_done(struct aor_upstream_xfer *xfer, CURLcode result);

static void free_body(struct aor_keystore *ks)
{
    free(ks->f.body);
    ks->f.body = NULL;
    ks->f.len = ks->f.cap = 0;
}

static int http_get(struct aor_keystore *ks, const char *url, enum stage stage)
{
    CURL *e;

    if ((e = aor_upstream_acquire(ks->f.up)) == NULL)
        return -1;
    ks->f.stage = stage;
    ks->f.len = 0;
    ks->f.over_limit = 0;
    ks->f.max_age = -1;
    ks->f.no_cache = 0;
    ks->f.errbuf[0] = '\0';
    if (curl_easy_setopt(e, CURLOPT_URL, url) != CURLE_OK || curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L) != CURLE_OK || curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)AOR_KEYSTORE_TIMEOUT_MS) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)AOR_KEYSTORE_CONNECT_TIMEOUT_MS) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)AOR_KEYSTORE_MAX_BODY) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_USERAGENT, "aoai-router/" AOR_VERSION) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_ERRORBUFFER, ks->f.errbuf) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_HEADERDATA, ks) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body) != CURLE_OK || curl_easy_setopt(e, CURLOPT_WRITEDATA, ks) != CURLE_OK) {
        aor_upstream_release(ks->f.up, e);
        return -1;
    }
    ks->f.xfer.easy = e;
    ks->f.xfer.on_done = on_fetch_done;
    if (aor_upstream_start(ks->f.up, &ks->f.xfer) != 0) {
        ks->f.xfer.easy = NULL;
        aor_upstream_release(ks->f.up, e);
        return -1;
    }
    return 0;
}

static const char *jwks_url(const struct aor_keystore *ks)
{
    return ks->kind == KIND_URI ? ks->location : ks->f.jwks_uri;
}

static const char *stage_name(const struct aor_keystore *ks)
{
    return ks->f.stage == STAGE_DISCOVERY ? "discovery" : "JWKS";
}

static void fetch_failed(struct aor_keystore *ks, const char *err, const char *detail)
{
    char ib[LOG_ISSUER_MAX + 1], ub[LOG_ISSUER_MAX + 1], kept[64];
    const char *url = ks->f.stage == STAGE_DISCOVERY ? ks->location : jwks_url(ks);
    uint64_t now = uv_now(ks->f.loop), delay = ks->f.backoff_ms, due;
    size_t keys;

    free_body(ks);
    atomic_fetch_add(&ks->failures, 1);
    pthread_mutex_lock(&ks->lock);
    ks->last_error = err;
    keys = set_size(ks->current);
    pthread_mutex_unlock(&ks->lock);
    if (ks->kind == KIND_DISCOVERY)
        ks->f.rediscover = 1; /* the jwks_uri may have moved */
    ks->f.backoff_ms = delay * 2 < AOR_KEYSTORE_BACKOFF_MAX_MS ? delay * 2 : AOR_KEYSTORE_BACKOFF_MAX_MS;
    due = now + delay;
    /* once keys are loaded, retries too stay one cooldown apart */
    if (keys != 0 && due < ks->f.last_start + (uint64_t)atomic_load(&ks->cooldown_s) * 1000)
        due = ks->f.last_start + (uint64_t)atomic_load(&ks->cooldown_s) * 1000;
    ks->f.next_due = due;
    if (keys != 0)
        snprintf(kept, sizeof(kept), "keeping the %zu keys loaded before", keys);
    else
        snprintf(kept, sizeof(kept), "no keys yet");
    AOR_LOG(err == aor_keystore_err_issuer_mismatch ? AOR_LOG_ERROR : AOR_LOG_WARN, "jwks",
            "issuer %s: %s fetch from %s failed: %s%s%s; %s, retry in %llu s", loggable(ks->issuer, ib), stage_name(ks),
            url != NULL ? loggable(url, ub) : "?", err, detail != NULL ? ": " : "", detail != NULL ? detail : "", kept,
            (unsigned long long)((due - now + 999) / 1000));
    evaluate(ks);
}

static unsigned refresh_interval(const struct aor_keystore *ks)
{
    int64_t s = ks->f.max_age >= 0 ? ks->f.max_age : ks->f.no_cache ? 0 : AOR_KEYSTORE_REFRESH_S;

    if (ks->f.no_cache && s > AOR_KEYSTORE_REFRESH_MIN_S)
        s = AOR_KEYSTORE_REFRESH_MIN_S;
    if (s < AOR_KEYSTORE_REFRESH_MIN_S)
        s = AOR_KEYSTORE_REFRESH_MIN_S;
    if (s > AOR_KEYSTORE_REFRESH_MAX_S)
        s = AOR_KEYSTORE_REFRESH_MAX_S;
    return (unsigned)s;
}

/* reads issuer and jwks_uri from the discovery document; NULL or an aor_keystore_err_* */
static const char *take_discovery(struct aor_keystore *ks, char *detail, size_t cap)
{
    json_t *doc = NULL, *v;
    json_error_t jerr;
    const char *err = aor_keystore_err_discovery, *uri;
    size_t len, i;
    int https = strncasecmp(ks->location, "https://", 8) == 0;

    detail[0] = '\0';
    if (!aor_jwk_json_depth_ok(ks->f.body, ks->f.len, DISCOVERY_DEPTH) ||
        (doc = json_loadb(ks->f.body, ks->f.len, JSON_REJECT_DUPLICATES, &jerr)) == NULL || !json_is_object(doc)) {
        snprintf(detail, cap, "not a JSON object");
        goto exit;
    }
    v = json_object_get(doc, "issuer");
    if (!json_is_string(v)) {
        snprintf(detail, cap, "no issuer");
        goto exit;
    }
    /* OIDC Discovery §4.3: the issuer must be identical to the one we expect */
    if (json_string_length(v) != strlen(ks->issuer) || memcmp(json_string_value(v), ks->issuer, json_string_length(v)) != 0) {
        char got[LOG_ISSUER_MAX + 1];
        snprintf(detail, cap, "it names \"%s\"", printable(json_string_value(v), json_string_length(v), got, sizeof(got)));
        err = aor_keystore_err_issuer_mismatch;
        goto exit;
    }
    v = json_object_get(doc, "jwks_uri");
    if (!json_is_string(v) || (len = json_string_length(v)) == 0 || len > AOR_KEYSTORE_MAX_URL) {
        snprintf(detail, cap, "no usable jwks_uri");
        goto exit;
    }
    uri = json_string_value(v);
    for (i = 0; i != len; ++i)
        if ((unsigned char)uri[i] <= 0x20 || (unsigned char)uri[i] >= 0x7f)
            break;
    /* an https discovery document may not send us to plain http */
    if (i != len || !(strncasecmp(uri, "https://", 8) == 0 || (!https && strncasecmp(uri, "http://", 7) == 0))) {
        snprintf(detail, cap, "jwks_uri is not an %s URL", https ? "https://" : "http(s)://");
        goto exit;
    }
    if (ks->f.jwks_uri == NULL || strcmp(ks->f.jwks_uri, uri) != 0) {
        char *copy = strdup(uri);
        if (copy == NULL) {
            err = aor_keystore_err_nomem;
            goto exit;
        }
        free(ks->f.jwks_uri);
        ks->f.jwks_uri = copy;
    }
    ks->f.rediscover = 0;
    err = NULL;
exit:
    json_decref(doc);
    return err;
}

static void on_fetch_done(struct aor_upstream_xfer *xfer, CURLcode result)
{
    struct aor_keystore *ks = (struct aor_keystore *)((char *)xfer - offsetof(struct aor_keystore, f.xfer));
    char detail[LOG_ISSUER_MAX + 64];
    struct aor_jwks *set = NULL;
    struct aor_jwks_stats st;
    const char *err;
    long code = 0;
    int rc;

    curl_easy_getinfo(xfer->easy, CURLINFO_RESPONSE_CODE, &code);
    aor_upstream_release(ks->f.up, xfer->easy);
    xfer->easy = NULL;

    if (result != CURLE_OK) {
        int big = ks->f.over_limit || result == CURLE_FILESIZE_EXCEEDED;
        fetch_failed(ks, big ? aor_keystore_err_too_large : aor_keystore_err_transport,
                     big                       ? NULL
                     : ks->f.errbuf[0] != '\0' ? ks->f.errbuf
                                               : curl_easy_strerror(result));
        return;
    }
    if (code != 200) {
        snprintf(detail, sizeof(detail), "HTTP %ld", code);
        fetch_failed(ks, aor_keystore_err_http_status, detail);
        return;
    }
    if (ks->f.stage == STAGE_DISCOVERY) {
        if ((err = take_discovery(ks, detail, sizeof(detail))) != NULL) {
            fetch_failed(ks, err, detail[0] != '\0' ? detail : NULL);
            return;
        }
        if (http_get(ks, ks->f.jwks_uri, STAGE_JWKS) != 0) {
            ks->f.stage = STAGE_JWKS;
            fetch_failed(ks, aor_keystore_err_nomem, NULL);
        }
        return;
    }

    rc = aor_jwks_parse(ks->f.body != NULL ? ks->f.body : "", ks->f.len, 0, &set, &st);
    if (rc != 0) {
        snprintf(detail, sizeof(detail),
                 "%s (%u entries: %u unsupported, %u not for signing, %u private, %u invalid, %u duplicate kid)",
                 rc == AOR_JWKS_E_NO_KEY      ? "no usable key"
                 : rc == AOR_JWKS_E_TOO_LARGE ? "too many keys"
                                              : "malformed",
                 st.entries, st.unsupported, st.not_for_signing, st.private_parts, st.invalid, st.duplicate_kid);
        fetch_failed(ks, rc == AOR_JWKS_E_NOMEM ? aor_keystore_err_nomem : aor_keystore_err_jwks, detail);
        return;
    }
    /* keys the IdP dropped disappear with the old set */
    install(ks, set, &st, jwks_url(ks));
    atomic_store(&ks->refresh_s, refresh_interval(ks));
    if (ks->f.max_age > AOR_KEYSTORE_REFRESH_MAX_S) {
        char ib[LOG_ISSUER_MAX + 1];
        AOR_LOG(AOR_LOG_INFO, "jwks", "issuer %s: Cache-Control max-age=%lld ignored; next refresh in %u s",
                loggable(ks->issuer, ib), (long long)ks->f.max_age, atomic_load(&ks->refresh_s));
    }
    free_body(ks);
    ks->f.backoff_ms = AOR_KEYSTORE_BACKOFF_MIN_MS;
    ks->f.next_due = uv_now(ks->f.loop) + (uint64_t)atomic_load(&ks->refresh_s) * 1000;
    evaluate(ks);
}

/* ---- the schedule ------------------------------------------------------------------------- */

static void start_fetch(struct aor_keystore *ks, int periodic)
{
    int rc;

    uv_timer_stop(&ks->f.timer);
    ks->f.refetch_wanted = 0;
    ks->f.force_wanted = 0;
    ks->f.ever_started = 1;
    ks->f.last_start = uv_now(ks->f.loop);
    ks->f.next_due = UINT64_MAX; /* set again when the fetch ends */
    atomic_fetch_add(&ks->fetches, 1);
    if (ks->kind == KIND_DISCOVERY && (ks->f.jwks_uri == NULL || ks->f.rediscover || periodic))
        rc = http_get(ks, ks->location, STAGE_DISCOVERY);
    else
        rc = http_get(ks, jwks_url(ks), STAGE_JWKS);
    if (rc != 0)
        fetch_failed(ks, aor_keystore_err_nomem, "cannot start the transfer");
}

static void pause_fetching(struct aor_keystore *ks)
{
    if (ks->f.xfer.active) {
        aor_upstream_cancel(ks->f.up, &ks->f.xfer);
        ks->f.next_due = 0; /* the cancelled fetch is owed: due at once if fetching resumes */
    }
    if (ks->f.xfer.easy != NULL) {
        aor_upstream_release(ks->f.up, ks->f.xfer.easy);
        ks->f.xfer.easy = NULL;
    }
    free_body(ks);
    uv_timer_stop(&ks->f.timer);
    ks->f.refetch_wanted = 0;
}

static void on_timer(uv_timer_t *t)
{
    evaluate(t->data);
}

/* decides, on the fetch loop, whether to fetch now or when to look again */
static void evaluate(struct aor_keystore *ks)
{
    uint64_t now, due;
    int periodic = 1;

    if (!ks->f.started || ks->f.stopping)
        return;
    if (atomic_exchange(&ks->force_flag, 0) != 0)
        ks->f.force_wanted = 1;
    if (!atomic_load(&ks->wanted)) {
        pause_fetching(ks);
        ks->f.force_wanted = 0;
        return;
    }
    if (ks->f.xfer.active) {
        /* single flight: the fetch in progress answers a refetch; a forced fetch (reload) waits for
         * it to end and goes then, as the one in progress may have started before the reload */
        ks->f.refetch_wanted = 0;
        return;
    }
    now = uv_now(ks->f.loop);
    due = ks->f.next_due;
    if (ks->f.force_wanted)
        due = now;
    if (ks->f.refetch_wanted) {
        uint64_t earliest = ks->f.ever_started ? ks->f.last_start + (uint64_t)atomic_load(&ks->cooldown_s) * 1000 : now;
        if (earliest < due) {
            due = earliest;
            periodic = 0;
        }
    }
    if (due > now) {
        uv_timer_start(&ks->f.timer, on_timer, due - now, 0);
        return;
    }
    start_fetch(ks, periodic);
}

static void on_async(uv_async_t *a)
{
    struct aor_keystore *ks = a->data;

    if (atomic_exchange(&ks->refetch_flag, 0) != 0)
        ks->f.refetch_wanted = 1;
    evaluate(ks);
}

int aor_keystore_start(struct aor_keystore *ks, uv_loop_t *loop, struct aor_upstream *up)
{
    if (ks->kind == KIND_SECRET || ks->kind == KIND_FILE)
        return 0;
    if (ks->f.started)
        return -1;
    ks->f.loop = loop;
    ks->f.up = up;
    uv_async_init(loop, &ks->f.async, on_async);
    ks->f.async.data = ks;
    uv_timer_init(loop, &ks->f.timer);
    ks->f.timer.data = ks;
    ks->f.open_handles = 2;
    ks->f.started = 1;
    atomic_store(&ks->refetch_flag, 0);
    pthread_mutex_lock(&ks->lock);
    ks->running = 1;
    pthread_mutex_unlock(&ks->lock);
    /* never fetch from inside this call: it may run on another thread before the loop does */
    uv_timer_start(&ks->f.timer, on_timer, 0, 0);
    return 0;
}

static void on_handle_closed(uv_handle_t *h)
{
    struct aor_keystore *ks = h->data;
    --ks->f.open_handles;
}

void aor_keystore_stop(struct aor_keystore *ks)
{
    if (!ks->f.started || ks->f.stopping)
        return;
    pthread_mutex_lock(&ks->lock);
    ks->running = 0; /* no thread signals f.async from now on */
    pthread_mutex_unlock(&ks->lock);
    ks->f.stopping = 1;
    pause_fetching(ks);
    uv_close((uv_handle_t *)&ks->f.timer, on_handle_closed);
    uv_close((uv_handle_t *)&ks->f.async, on_handle_closed);
}

/* ---- the registry ------------------------------------------------------------------------- */

static struct {
    pthread_mutex_t lock;
    struct aor_keystore *head;
    uv_loop_t *loop;
    struct aor_upstream *up;
    uv_async_t wake; /* main thread → fetch loop: the set of keystores changed */
    int running;     /* wake is open */
} reg = {.lock = PTHREAD_MUTEX_INITIALIZER};

static int same_source(const struct aor_keystore *ks, const struct aor_jwt_issuer_conf *ic)
{
    const char *loc = location_of(ic);
    unsigned char digest[32];
    int same;

    if (ks->kind != kind_of(ic) || strcmp(ks->issuer, ic->issuer) != 0)
        return 0;
    if (ks->kind != KIND_SECRET)
        return strcmp(ks->location, loc) == 0;
    if (sha256(ic->secret, strlen(ic->secret), digest) != 0)
        return 0;
    same = CRYPTO_memcmp(digest, ks->secret_digest, sizeof(digest)) == 0;
    OPENSSL_cleanse(digest, sizeof(digest));
    return same;
}

/* on the fetch loop: start keystores that are new, let the others re-evaluate (pause/resume) */
static void on_reg_wake(uv_async_t *a)
{
    struct aor_keystore *ks;

    pthread_mutex_lock(&reg.lock);
    for (ks = reg.head; ks != NULL; ks = ks->reg_next) {
        if (ks->kind == KIND_SECRET || ks->kind == KIND_FILE)
            continue;
        if (!ks->f.started) {
            if (atomic_load(&ks->wanted))
                aor_keystore_start(ks, reg.loop, reg.up);
        } else {
            evaluate(ks);
        }
    }
    pthread_mutex_unlock(&reg.lock);
}

int aor_keystores_attach(const struct aor_config *conf, struct aor_keystore **out)
{
    struct aor_keystore *ks;
    size_t i, j;

    for (i = 0; i != conf->auth.num_jwt; ++i) {
        const struct aor_jwt_issuer_conf *ic = &conf->auth.jwt[i];
        pthread_mutex_lock(&reg.lock);
        for (ks = reg.head; ks != NULL && !same_source(ks, ic); ks = ks->reg_next)
            ;
        pthread_mutex_unlock(&reg.lock);
        if (ks != NULL) {
            aor_keystore_reload_file(ks); /* a no-op unless jwks_file */
            if (ks->kind == KIND_URI || ks->kind == KIND_DISCOVERY)
                atomic_store(&ks->force_flag, 1); /* taken on the fetch loop when reg.wake runs */
        } else {
            if ((ks = create(ic, 0)) == NULL)
                return -1;
            pthread_mutex_lock(&reg.lock);
            ks->reg_next = reg.head;
            reg.head = ks;
            pthread_mutex_unlock(&reg.lock);
        }
        atomic_store(&ks->cooldown_s, ic->jwks_refetch_cooldown_s);
        out[i] = ks;
    }
    /* commit: only now do keystores join or leave the refreshing set */
    pthread_mutex_lock(&reg.lock);
    for (ks = reg.head; ks != NULL; ks = ks->reg_next) {
        int wanted = 0;
        for (j = 0; j != conf->auth.num_jwt && !wanted; ++j)
            wanted = out[j] == ks;
        atomic_store(&ks->wanted, wanted);
    }
    if (reg.running)
        uv_async_send(&reg.wake);
    pthread_mutex_unlock(&reg.lock);
    return 0;
}

int aor_keystores_start(uv_loop_t *loop, struct aor_upstream *up)
{
    pthread_mutex_lock(&reg.lock);
    if (reg.loop != NULL) {
        pthread_mutex_unlock(&reg.lock);
        return -1;
    }
    reg.loop = loop;
    reg.up = up;
    uv_async_init(loop, &reg.wake, on_reg_wake);
    reg.running = 1;
    uv_async_send(&reg.wake); /* starts the keystores attached so far, on the loop */
    pthread_mutex_unlock(&reg.lock);
    return 0;
}

void aor_keystores_stop(void)
{
    struct aor_keystore *ks;

    pthread_mutex_lock(&reg.lock);
    if (reg.running) {
        reg.running = 0;
        for (ks = reg.head; ks != NULL; ks = ks->reg_next)
            aor_keystore_stop(ks);
        uv_close((uv_handle_t *)&reg.wake, NULL);
    }
    pthread_mutex_unlock(&reg.lock);
}

void aor_keystores_free(void)
{
    pthread_mutex_lock(&reg.lock);
    while (reg.head != NULL) {
        struct aor_keystore *ks = reg.head;
        reg.head = ks->reg_next;
        aor_keystore_destroy(ks);
    }
    reg.loop = NULL;
    reg.up = NULL;
    pthread_mutex_unlock(&reg.lock);
}

/* ---- picking the issuer ------------------------------------------------------------------- */

int aor_jwt_peek_issuer(const char *token, size_t len, char *buf, size_t cap)
{
    unsigned char payload[AOR_JWT_MAX_TOKEN / 4 * 3 + 3];
    const char *p, *dot1, *dot2;
    json_error_t jerr;
    json_t *claims, *iss;
    long n;
    int ret = -1;

    if (token == NULL || len > AOR_JWT_MAX_TOKEN || buf == NULL || cap == 0)
        return -1;
    if ((dot1 = memchr(token, '.', len)) == NULL)
        return -1;
    p = dot1 + 1;
    if ((dot2 = memchr(p, '.', (size_t)(token + len - p))) == NULL)
        return -1;
    if ((n = aor_jwk_b64url_decode(p, (size_t)(dot2 - p), payload, sizeof(payload))) <= 0 ||
        !aor_jwk_json_depth_ok((const char *)payload, (size_t)n, AOR_JWT_PAYLOAD_DEPTH))
        return -1;
    if ((claims = json_loadb((const char *)payload, (size_t)n, JSON_REJECT_DUPLICATES, &jerr)) == NULL)
        return -1;
    iss = json_object_get(claims, "iss");
    if (json_is_object(claims) && json_is_string(iss) && json_string_length(iss) < cap &&
        strlen(json_string_value(iss)) == json_string_length(iss)) {
        memcpy(buf, json_string_value(iss), json_string_length(iss) + 1);
        ret = (int)json_string_length(iss);
    }
    json_decref(claims);
    return ret;
}

int aor_jwt_issuer_index(const struct aor_config *conf, const char *iss, size_t len)
{
    size_t i;

    for (i = 0; i != conf->auth.num_jwt; ++i) {
        const char *s = conf->auth.jwt[i].issuer;
        if (s != NULL && strlen(s) == len && memcmp(s, iss, len) == 0)
            return (int)i;
    }
    return -1;
}
