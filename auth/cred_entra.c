/*
 * cred_entra.c — the token sources of cred.h: managed identity (IMDS, or App Service's
 * IDENTITY_ENDPOINT), workload identity (a projected token file as client_assertion at Entra
 * ID), client_secret, oidc_federation (an external IdP's client-credentials token as
 * client_assertion at Entra ID), and openai_wif (a subject token exchanged at OpenAI: from IMDS,
 * from Entra ID with a projected token as client_assertion, or a file as is).
 *
 * Threads: a source's identity is immutable. `lock` guards the current token and the
 * pending/serial fields that readers on any worker look at; `stats` are atomics; everything
 * under `f` belongs to the fetch loop's thread (worker 0), except f.file_* which the thread
 * pool's read of a token file writes between uv_queue_work and its after-callback.
 *
 * Schedule (fetch loop): one timer per source fires at f.next_due — the refresh point of the
 * current token (aor_cred_refresh_after_ms) or the backoff after a failure. One call chain
 * in flight per source (single flight). A backend's 401 drops the token under the lock and
 * signals f.async: the refresh starts at once. When a source stops being PENDING (a token,
 * or a failed call) every worker's wait queue is woken.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <curl/curl.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <uv.h>
#include "config.h"
#include "cred.h"
#include "cred_source.h"
#include "cred_token.h"
#include "log.h"
#include "upstream.h"

#ifndef AOR_VERSION
#define AOR_VERSION "dev"
#endif

#define LABEL_MAX 200
#define DETAIL_MAX 512
#define FILE_NOT_REGULAR (-1) /* f.file_err: the token file is a FIFO, a directory, a device */

struct aor_cred_token {
    atomic_uint refcnt;
    uint64_t serial;
    size_t len;
    char value[];
};

enum stage { STAGE_TOKEN, STAGE_EXTERNAL };

struct aor_token_source {
    /* identity: immutable after create */
    enum aor_cred_type type;
    int app_service;  /* managed identity through IDENTITY_ENDPOINT */
    char *endpoint;   /* IMDS / App Service URL, or Entra's token URL */
    char *resource;   /* e.g. https://cognitiveservices.azure.com */
    char *client_id;  /* MI (optional), WIF, client_secret; oidc_federation: azure_client_id */
    char *token_file; /* WIF */
    char *secret;     /* client secret, App Service's IDENTITY_HEADER, or the external IdP's client secret */
    char *ext_url, *ext_client_id, *ext_audience; /* oidc_federation: the external IdP */
    char *wif_idp, *wif_sa;                       /* openai_wif: identity_provider_id, service_account_id */
    char *subject_url; /* openai_wif with a managed identity subject: IMDS (s->resource is the subject's resource) */
    char *entra_url;   /* openai_wif with a workload identity subject: Entra's token URL (token_file as the assertion) */
    char *key;         /* every non-secret identity field, for the registry */
    unsigned char secret_digest[32];
    char label[LABEL_MAX + 1]; /* for log lines: type and client id, never a secret */
    struct aor_token_source *reg_next;

    pthread_mutex_t lock;
    struct aor_cred_token *token; /* under lock */
    uint64_t usable_until_ms;     /* under lock: uv_hrtime ms; the token is sent only before this */
    uint64_t pending_since_ms;    /* under lock: 0 = not pending; else no token and the call for one has not failed yet */
    uint64_t last_drop_ms;        /* under lock: the last 401 that dropped a token */
    uint64_t fetch_started_ms;    /* under lock: when the call chain in flight began, 0 = none */
    unsigned streak;              /* under lock: token calls failed in a row */
    uint64_t serial;              /* under lock */
    int running;                  /* under lock: f.async is open */

    atomic_int wanted;    /* the current config names this source */
    atomic_int drop_flag; /* a 401 dropped the token: refresh now */
    struct aor_cred_stats stats;

    /* the fetch loop's thread only */
    struct {
        uv_loop_t *loop;
        struct aor_upstream *up;
        uv_async_t async;
        uv_timer_t timer;
        uv_work_t work;
        int started, stopping, open_handles, work_pending, fetching;
        struct aor_upstream_xfer xfer;
        enum stage stage;
        struct curl_slist *headers;
        char *post; /* the form body: holds secrets, wiped after the call */
        size_t post_len;
        char *body;
        size_t len;
        int over_limit;
        char errbuf[CURL_ERROR_SIZE];
        uint64_t next_due;
        unsigned failures;
        /* workload identity: the token file read by the thread pool */
        char *file_buf;
        size_t file_len;
        int file_err;
        /* oidc_federation: the external IdP's token (the assertion) */
        char *ext_token;
        size_t ext_len;
        uint64_t ext_refresh_ms;
        char *assertion; /* what was sent as client_assertion in the running call (for redaction) */
        size_t assertion_len;
    } f;
};

static uint64_t mono_ms(void)
{
    return uv_hrtime() / 1000000u;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void wipe_free(char *p, size_t len)
{
    if (p != NULL) {
        OPENSSL_cleanse(p, len);
        free(p);
    }
}

static void wipe_free_str(char *p)
{
    if (p != NULL)
        wipe_free(p, strlen(p));
}

/* ---- tokens ------------------------------------------------------------------------------ */

void aor_token_release(struct aor_cred_token *tok)
{
    if (tok != NULL && atomic_fetch_sub(&tok->refcnt, 1) == 1) {
        OPENSSL_cleanse(tok->value, tok->len);
        free(tok);
    }
}

/*
 * Since when requests have had reason to wait for the call in flight, 0 when they have none: no
 * valid token, and either the first token (or the one after a 401) is on its way, or a call runs
 * with no failure in a row (a refresh slower than the token's margin, a source a reload brought
 * back) — from when the token stopped being sendable.
 */
static uint64_t pending_locked(const struct aor_token_source *s, uint64_t now)
{
    uint64_t since;

    if (s->token != NULL && now < s->usable_until_ms)
        return 0;
    if (s->pending_since_ms != 0)
        return s->pending_since_ms;
    if (s->fetch_started_ms == 0 || s->streak != 0)
        return 0;
    since = s->fetch_started_ms;
    if (s->token != NULL && s->usable_until_ms > since)
        since = s->usable_until_ms;
    return since;
}

static int state_locked(struct aor_token_source *s, uint64_t now)
{
    if (s->token != NULL && now < s->usable_until_ms)
        return AOR_CRED_OK;
    return pending_locked(s, now) != 0 ? AOR_CRED_PENDING : AOR_CRED_UNAVAILABLE;
}

int aor_token_source_take(struct aor_token_source *s, struct aor_cred_token **tok, const char **value, size_t *len,
                          uint64_t *serial)
{
    int st;

    pthread_mutex_lock(&s->lock);
    if ((st = state_locked(s, mono_ms())) == AOR_CRED_OK) {
        atomic_fetch_add(&s->token->refcnt, 1);
        *tok = s->token;
        *value = s->token->value;
        *len = s->token->len;
        *serial = s->token->serial;
    }
    pthread_mutex_unlock(&s->lock);
    return st;
}

int aor_token_source_state(struct aor_token_source *s)
{
    int st;

    pthread_mutex_lock(&s->lock);
    st = state_locked(s, mono_ms());
    pthread_mutex_unlock(&s->lock);
    return st;
}

/* ---- the wait queues (one per worker) ------------------------------------------------------ */

struct aor_cred_waitq {
    uv_loop_t *loop;
    uv_async_t async;
    uv_timer_t timer;
    struct aor_cred_waiter head; /* circular list */
    size_t count;
    int open_handles;
    void (*watch_cb)(void *data);
    void *watch_data;
    struct aor_cred_waitq *next;
};

static pthread_mutex_t waitqs_lock = PTHREAD_MUTEX_INITIALIZER;
static struct aor_cred_waitq *waitqs;

/* a source stopped being pending: every worker looks at its waiters */
static void notify_waiters(void)
{
    struct aor_cred_waitq *q;

    pthread_mutex_lock(&waitqs_lock);
    for (q = waitqs; q != NULL; q = q->next)
        uv_async_send(&q->async);
    pthread_mutex_unlock(&waitqs_lock);
}

/* off whichever list holds it: a queue's, or a sweep's list of waiters about to be called */
static void unlink_waiter(struct aor_cred_waiter *w)
{
    w->prev->next = w->next;
    w->next->prev = w->prev;
    w->prev = w->next = NULL;
    if (w->q != NULL)
        --w->q->count;
    w->q = NULL;
}

static void on_waitq_timer(uv_timer_t *t);

static void sweep(struct aor_cred_waitq *q)
{
    struct aor_cred_waiter fired, *w, *next;
    uint64_t now = mono_ms(), earliest = UINT64_MAX;

    fired.next = fired.prev = &fired;
    for (w = q->head.next; w != &q->head; w = next) {
        next = w->next;
        if (now >= w->deadline_ms || aor_token_source_state(w->src) != AOR_CRED_PENDING) {
            unlink_waiter(w);
            w->next = &fired;
            w->prev = fired.prev;
            fired.prev->next = w;
            fired.prev = w;
        } else if (w->deadline_ms < earliest) {
            earliest = w->deadline_ms;
        }
    }
    if (earliest != UINT64_MAX)
        uv_timer_start(&q->timer, on_waitq_timer, earliest - now, 0);
    else
        uv_timer_stop(&q->timer);
    /* the callbacks may queue again or free their objects: they run after the walk. A waiter
     * cancelled meanwhile (by another's callback) leaves this list too */
    while ((w = fired.next) != &fired) {
        unlink_waiter(w);
        w->cb(w);
    }
}

static void on_waitq_async(uv_async_t *a)
{
    struct aor_cred_waitq *q = a->data;

    sweep(q);
    if (q->watch_cb != NULL)
        q->watch_cb(q->watch_data);
}

void aor_cred_waitq_watch(struct aor_cred_waitq *q, void (*cb)(void *data), void *data)
{
    if (q == NULL)
        return;
    q->watch_cb = cb;
    q->watch_data = cb != NULL ? data : NULL;
}

static void on_waitq_timer(uv_timer_t *t)
{
    sweep(t->data);
}

struct aor_cred_waitq *aor_cred_waitq_create(uv_loop_t *loop)
{
    struct aor_cred_waitq *q = calloc(1, sizeof(*q));

    if (q == NULL)
        return NULL;
    q->loop = loop;
    q->head.next = q->head.prev = &q->head;
    uv_async_init(loop, &q->async, on_waitq_async);
    uv_timer_init(loop, &q->timer);
    q->async.data = q->timer.data = q;
    q->open_handles = 2;
    pthread_mutex_lock(&waitqs_lock);
    q->next = waitqs;
    waitqs = q;
    pthread_mutex_unlock(&waitqs_lock);
    return q;
}

static void on_waitq_closed(uv_handle_t *h)
{
    struct aor_cred_waitq *q = h->data;
    if (--q->open_handles == 0)
        free(q);
}

void aor_cred_waitq_close(struct aor_cred_waitq *q)
{
    struct aor_cred_waitq **pp;

    if (q == NULL)
        return;
    pthread_mutex_lock(&waitqs_lock);
    for (pp = &waitqs; *pp != NULL; pp = &(*pp)->next)
        if (*pp == q) {
            *pp = q->next;
            break;
        }
    pthread_mutex_unlock(&waitqs_lock);
    while (q->head.next != &q->head)
        unlink_waiter(q->head.next);
    q->watch_cb = NULL;
    q->watch_data = NULL;
    uv_close((uv_handle_t *)&q->async, on_waitq_closed);
    uv_close((uv_handle_t *)&q->timer, on_waitq_closed);
}

int aor_cred_wait(struct aor_cred_waitq *q, const struct aor_cred_conf *cred, struct aor_cred_waiter *w, uint64_t wait_ms,
                  aor_cred_wait_cb cb)
{
    struct aor_token_source *s = cred->source;
    uint64_t now = mono_ms(), since, deadline;
    int st;

    if (q == NULL || s == NULL || q->count >= AOR_CRED_MAX_WAITERS || w->next != NULL)
        return -1;
    pthread_mutex_lock(&s->lock);
    st = state_locked(s, now);
    since = pending_locked(s, now);
    pthread_mutex_unlock(&s->lock);
    if (st != AOR_CRED_PENDING)
        return -1;
    deadline = since + wait_ms;
    if (deadline > now + wait_ms)
        deadline = now + wait_ms;
    if (deadline <= now)
        return -1;
    w->q = q;
    w->src = s;
    w->deadline_ms = deadline;
    w->cb = cb;
    w->prev = q->head.prev;
    w->next = &q->head;
    q->head.prev->next = w;
    q->head.prev = w;
    ++q->count;
    if (!uv_is_active((uv_handle_t *)&q->timer) || uv_timer_get_due_in(&q->timer) > deadline - now)
        uv_timer_start(&q->timer, on_waitq_timer, deadline - now, 0);
    return 0;
}

void aor_cred_wait_cancel(struct aor_cred_waiter *w)
{
    if (w->next != NULL)
        unlink_waiter(w);
}

/* ---- logging without secrets --------------------------------------------------------------- */

/*
 * An endpoint's error text may echo what we sent (a hostile or buggy IdP), whole or in part — a
 * JWT without its header (which anyone can re-make) is the whole credential. Whatever in `text`
 * holds a piece of one of our secrets is cut from where the echo starts: the secret is looked
 * for in PROBE-byte pieces at every multiple of PROBE (and its last PROBE bytes), so every echo
 * of 2 * PROBE - 1 bytes or more is found, and from a found piece the match is followed back.
 * A secret shorter than PROBE is looked for whole (at least 4 bytes).
 */
#define PROBE 12

static void redact(char *text, size_t cap, const char *secret, size_t len)
{
    size_t probe = len < PROBE ? len : PROBE, tlen, k, back;
    char *at, *cut = NULL;

    if (secret == NULL || probe < 4)
        return;
    tlen = strlen(text);
    for (k = 0;; k += probe) {
        if (k + probe > len)
            k = len - probe; /* the last piece overlaps the one before */
        if ((at = memmem(text, tlen, secret + k, probe)) != NULL) {
            for (back = 0; back < k && at - back > text && at[-(ptrdiff_t)back - 1] == secret[k - back - 1]; ++back)
                ;
            if (cut == NULL || at - back < cut)
                cut = at - back;
        }
        if (k + probe >= len)
            break;
    }
    if (cut != NULL)
        snprintf(cut, cap - (size_t)(cut - text), "[redacted]");
}

static struct aor_token_source *registry_head(void);

/*
 * Every source's secrets, not only the failing one's: an endpoint shared by several identities
 * may echo another's. All sources run on this loop (their f.* are this thread's) and the registry
 * only grows at its head until exit, so the walk needs no lock (the caller may hold reg.lock).
 */
static void redact_all(struct aor_token_source *self, char *text, size_t cap)
{
    struct aor_token_source *s;

    (void)self;
    for (s = registry_head(); s != NULL; s = s->reg_next) {
        redact(text, cap, s->secret, s->secret != NULL ? strlen(s->secret) : 0);
        redact(text, cap, s->f.assertion, s->f.assertion_len);
        redact(text, cap, s->f.ext_token, s->f.ext_len);
        if (!s->f.work_pending) /* else the thread pool may be writing it */
            redact(text, cap, s->f.file_buf, s->f.file_len);
    }
}

/* ---- the schedule ------------------------------------------------------------------------- */

static void evaluate(struct aor_token_source *s);
static void on_xfer_done(struct aor_upstream_xfer *xfer, CURLcode result);

static void end_call(struct aor_token_source *s)
{
    if (s->f.headers != NULL) {
        struct curl_slist *h;
        for (h = s->f.headers; h != NULL; h = h->next) /* X-IDENTITY-HEADER is a secret */
            OPENSSL_cleanse(h->data, strlen(h->data));
        curl_slist_free_all(s->f.headers);
        s->f.headers = NULL;
    }
    wipe_free(s->f.post, s->f.post_len);
    s->f.post = NULL;
    s->f.post_len = 0;
    wipe_free(s->f.body, s->f.len);
    s->f.body = NULL;
    s->f.len = 0;
}

static void end_fetch(struct aor_token_source *s)
{
    end_call(s);
    wipe_free(s->f.assertion, s->f.assertion_len);
    s->f.assertion = NULL;
    s->f.assertion_len = 0;
    wipe_free(s->f.file_buf, s->f.file_len);
    s->f.file_buf = NULL;
    s->f.file_len = 0;
    s->f.fetching = 0;
}

static void drop_ext(struct aor_token_source *s)
{
    wipe_free(s->f.ext_token, s->f.ext_len);
    s->f.ext_token = NULL;
    s->f.ext_len = 0;
    s->f.ext_refresh_ms = 0;
}

static void fetch_failed(struct aor_token_source *s, const char *what, const char *detail)
{
    uint64_t now = mono_ms(), delay;
    int was_pending, valid;
    char kept[80];

    ++s->f.failures;
    delay = (uint64_t)aor_cred_backoff_ms(s->f.failures, (uint32_t)(uv_hrtime() * 2654435761u >> 7));
    s->f.next_due = now + delay;
    __atomic_fetch_add(&s->stats.refresh_failures, 1, __ATOMIC_RELAXED);
    pthread_mutex_lock(&s->lock);
    was_pending = pending_locked(s, now) != 0;
    s->pending_since_ms = 0;
    s->fetch_started_ms = 0;
    s->streak = s->f.failures;
    valid = s->token != NULL && now < s->usable_until_ms;
    if (valid)
        snprintf(kept, sizeof(kept), "keeping the current token (%llu s left)",
                 (unsigned long long)((s->usable_until_ms - now) / 1000));
    else
        snprintf(kept, sizeof(kept), "no valid token: its backends are skipped");
    pthread_mutex_unlock(&s->lock);
    AOR_LOG(AOR_LOG_WARN, "cred", "%s: token call failed%s: %s%s%s; %s; retry in %llu ms", s->label,
            s->f.stage != STAGE_EXTERNAL     ? ""
            : s->type == AOR_CRED_OPENAI_WIF ? " (subject token)"
                                             : " (external IdP)",
            what, detail != NULL && detail[0] != '\0' ? ": " : "", detail != NULL ? detail : "", kept, (unsigned long long)delay);
    end_fetch(s);
    if (was_pending)
        notify_waiters();
    evaluate(s);
}

static void install(struct aor_token_source *s, const char *tok, const struct aor_cred_response *r)
{
    struct aor_cred_token *t = malloc(sizeof(*t) + r->token_len + 1), *old;
    uint64_t now = mono_ms(), refresh;

    if (t == NULL) {
        fetch_failed(s, "out of memory", NULL);
        return;
    }
    atomic_init(&t->refcnt, 1);
    t->len = r->token_len;
    memcpy(t->value, tok, r->token_len + 1);
    refresh = (uint64_t)aor_cred_refresh_after_ms(r->lifetime_ms, r->refresh_in_ms);
    pthread_mutex_lock(&s->lock);
    old = s->token;
    t->serial = ++s->serial;
    s->token = t;
    s->usable_until_ms = now + (uint64_t)(r->lifetime_ms - aor_cred_send_margin_ms(r->lifetime_ms));
    s->pending_since_ms = 0;
    s->fetch_started_ms = 0;
    s->streak = 0;
    pthread_mutex_unlock(&s->lock);
    aor_token_release(old);
    __atomic_store_n(&s->stats.expires_at_ms, wall_ms() + r->lifetime_ms, __ATOMIC_RELAXED);
    s->f.failures = 0;
    s->f.next_due = now + refresh;
    AOR_LOG(s->serial == 1 ? AOR_LOG_INFO : AOR_LOG_DEBUG, "cred", "%s: token acquired, expires in %lld s, next refresh in %llu s",
            s->label, (long long)(r->lifetime_ms / 1000), (unsigned long long)(refresh / 1000));
    end_fetch(s);
    notify_waiters();
    evaluate(s);
}

/* ---- HTTP --------------------------------------------------------------------------------- */

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
    struct aor_token_source *s = arg;
    size_t len = size * n;
    char *p;

    if (len > AOR_CRED_MAX_BODY - s->f.len) {
        s->f.over_limit = 1;
        return 0; /* aborts the transfer */
    }
    /* grown exactly (the body may hold a token: no stale copies left behind by realloc) */
    if ((p = malloc(s->f.len + len + 1)) == NULL)
        return 0;
    if (s->f.body != NULL)
        memcpy(p, s->f.body, s->f.len);
    memcpy(p + s->f.len, data, len);
    wipe_free(s->f.body, s->f.len);
    s->f.body = p;
    s->f.len += len;
    s->f.body[s->f.len] = '\0';
    return len;
}

/* appends `name=value&` form-encoded; 0 or -1 */
static int form_add(CURL *e, char **buf, size_t *len, const char *name, const char *value, size_t value_len)
{
    char *enc = curl_easy_escape(e, value, (int)value_len), *p;
    size_t n, need, old = *len;

    if (enc == NULL)
        return -1;
    n = strlen(enc);
    need = old + strlen(name) + 1 + n + 2;
    if ((p = malloc(need)) == NULL) {
        OPENSSL_cleanse(enc, n);
        curl_free(enc);
        return -1;
    }
    if (*buf != NULL)
        memcpy(p, *buf, old);
    *len = old + (size_t)snprintf(p + old, need - old, "%s%s=%s", old != 0 ? "&" : "", name, enc);
    OPENSSL_cleanse(enc, n);
    curl_free(enc);
    wipe_free(*buf, old);
    *buf = p;
    return 0;
}

static int start_call(struct aor_token_source *s, const char *url, int post, int no_proxy)
{
    CURL *e;

    if ((e = aor_upstream_acquire(s->f.up)) == NULL)
        return -1;
    s->f.len = 0;
    s->f.over_limit = 0;
    s->f.errbuf[0] = '\0';
    if (curl_easy_setopt(e, CURLOPT_URL, url) != CURLE_OK || curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)AOR_CRED_TIMEOUT_MS) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)AOR_CRED_CONNECT_TIMEOUT_MS) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)AOR_CRED_MAX_BODY) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_USERAGENT, "aoai-router/" AOR_VERSION) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_ERRORBUFFER, s->f.errbuf) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body) != CURLE_OK || curl_easy_setopt(e, CURLOPT_WRITEDATA, s) != CURLE_OK ||
        (s->f.headers != NULL && curl_easy_setopt(e, CURLOPT_HTTPHEADER, s->f.headers) != CURLE_OK) ||
        (no_proxy && curl_easy_setopt(e, CURLOPT_PROXY, "") != CURLE_OK) ||
        (post && (curl_easy_setopt(e, CURLOPT_POSTFIELDS, s->f.post) != CURLE_OK ||
                  curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)s->f.post_len) != CURLE_OK)) ||
        (!post && curl_easy_setopt(e, CURLOPT_HTTPGET, 1L) != CURLE_OK)) {
        aor_upstream_release(s->f.up, e);
        return -1;
    }
    s->f.xfer.easy = e;
    s->f.xfer.on_done = on_xfer_done;
    if (aor_upstream_start(s->f.up, &s->f.xfer) != 0) {
        s->f.xfer.easy = NULL;
        aor_upstream_release(s->f.up, e);
        return -1;
    }
    return 0;
}

/* managed identity: GET IMDS (Metadata: true, api-version 2018-02-01) or App Service (X-IDENTITY-HEADER, 2019-08-01) */
static int call_managed_identity(struct aor_token_source *s, const char *endpoint)
{
    char *url = NULL, *res = NULL, *cid = NULL, *hdr = NULL;
    CURL *e = curl_easy_init();
    size_t n;
    int rc = -1;

    if (e == NULL)
        return -1;
    if ((res = curl_easy_escape(e, s->resource, 0)) == NULL ||
        (s->client_id != NULL && (cid = curl_easy_escape(e, s->client_id, 0)) == NULL))
        goto exit;
    n = strlen(endpoint) + strlen(res) + (cid != NULL ? strlen(cid) : 0) + 96;
    if ((url = malloc(n)) == NULL)
        goto exit;
    snprintf(url, n, "%s%capi-version=%s&resource=%s%s%s", endpoint, strchr(endpoint, '?') != NULL ? '&' : '?',
             s->app_service ? "2019-08-01" : "2018-02-01", res, cid != NULL ? "&client_id=" : "", cid != NULL ? cid : "");
    if (s->app_service) {
        n = strlen(s->secret) + sizeof("X-IDENTITY-HEADER: ");
        if ((hdr = malloc(n)) == NULL)
            goto exit;
        snprintf(hdr, n, "X-IDENTITY-HEADER: %s", s->secret);
        s->f.headers = curl_slist_append(NULL, hdr);
    } else {
        s->f.headers = curl_slist_append(NULL, "Metadata: true");
    }
    if (s->f.headers == NULL)
        goto exit;
    rc = start_call(s, url, 0, 1);
exit:
    wipe_free_str(hdr);
    free(url);
    curl_free(res);
    curl_free(cid);
    curl_easy_cleanup(e);
    return rc;
}

/* Entra ID v2.0 client credentials: with the secret (client_secret) or an assertion (WIF, federation) */
static int call_entra(struct aor_token_source *s, const char *url, enum stage stage, const char *assertion, size_t assertion_len)
{
    CURL *e = curl_easy_init();
    char *scope = NULL;
    size_t n;
    int rc = -1;

    if (e == NULL)
        return -1;
    n = strlen(s->resource) + sizeof("/.default");
    if ((scope = malloc(n)) == NULL)
        goto exit;
    snprintf(scope, n, "%s/.default", s->resource);
    if (form_add(e, &s->f.post, &s->f.post_len, "grant_type", "client_credentials", 18) != 0 ||
        form_add(e, &s->f.post, &s->f.post_len, "client_id", s->client_id, strlen(s->client_id)) != 0 ||
        form_add(e, &s->f.post, &s->f.post_len, "scope", scope, strlen(scope)) != 0)
        goto exit;
    if (assertion != NULL) {
        if (form_add(e, &s->f.post, &s->f.post_len, "client_assertion_type",
                     "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                     sizeof("urn:ietf:params:oauth:client-assertion-type:jwt-bearer") - 1) != 0 ||
            form_add(e, &s->f.post, &s->f.post_len, "client_assertion", assertion, assertion_len) != 0)
            goto exit;
        wipe_free(s->f.assertion, s->f.assertion_len);
        if ((s->f.assertion = malloc(assertion_len + 1)) == NULL)
            goto exit;
        memcpy(s->f.assertion, assertion, assertion_len);
        s->f.assertion[assertion_len] = '\0';
        s->f.assertion_len = assertion_len;
    } else if (form_add(e, &s->f.post, &s->f.post_len, "client_secret", s->secret, strlen(s->secret)) != 0) {
        goto exit;
    }
    s->f.headers = curl_slist_append(NULL, "Accept: application/json");
    s->f.stage = stage;
    rc = s->f.headers != NULL ? start_call(s, url, 1, 0) : -1;
exit:
    free(scope);
    curl_easy_cleanup(e);
    return rc;
}

/* oidc_federation, first leg: client credentials at the external IdP, for the Entra audience */
static int call_external(struct aor_token_source *s)
{
    CURL *e = curl_easy_init();
    int rc = -1;

    if (e == NULL)
        return -1;
    if (form_add(e, &s->f.post, &s->f.post_len, "grant_type", "client_credentials", 18) == 0 &&
        form_add(e, &s->f.post, &s->f.post_len, "client_id", s->ext_client_id, strlen(s->ext_client_id)) == 0 &&
        form_add(e, &s->f.post, &s->f.post_len, "client_secret", s->secret, strlen(s->secret)) == 0 &&
        form_add(e, &s->f.post, &s->f.post_len, "audience", s->ext_audience, strlen(s->ext_audience)) == 0 &&
        (s->f.headers = curl_slist_append(NULL, "Accept: application/json")) != NULL) {
        s->f.stage = STAGE_EXTERNAL;
        rc = start_call(s, s->ext_url, 1, 0);
    }
    curl_easy_cleanup(e);
    return rc;
}

/* openai_wif: RFC 8693 token exchange at OpenAI, a JSON POST with the subject token */
static int call_openai(struct aor_token_source *s, const char *subject, size_t subject_len)
{
    json_t *o = NULL;
    char *body = NULL;
    int rc = -1;

    wipe_free(s->f.assertion, s->f.assertion_len); /* remembered for redaction */
    s->f.assertion = NULL;
    s->f.assertion_len = 0;
    if ((s->f.assertion = malloc(subject_len + 1)) == NULL)
        return -1;
    memcpy(s->f.assertion, subject, subject_len);
    s->f.assertion[subject_len] = '\0';
    s->f.assertion_len = subject_len;
    if ((o = json_object()) == NULL ||
        json_object_set_new(o, "grant_type", json_string("urn:ietf:params:oauth:grant-type:token-exchange")) != 0 ||
        json_object_set_new(o, "subject_token_type", json_string("urn:ietf:params:oauth:token-type:jwt")) != 0 ||
        json_object_set_new(o, "subject_token", json_stringn(subject, subject_len)) != 0 ||
        json_object_set_new(o, "identity_provider_id", json_string(s->wif_idp)) != 0 ||
        json_object_set_new(o, "service_account_id", json_string(s->wif_sa)) != 0 || (body = json_dumps(o, JSON_COMPACT)) == NULL)
        goto exit;
    s->f.post = body; /* wiped by end_call */
    s->f.post_len = strlen(body);
    body = NULL;
    if ((s->f.headers = curl_slist_append(NULL, "Content-Type: application/json")) == NULL ||
        curl_slist_append(s->f.headers, "Accept: application/json") == NULL)
        goto exit;
    s->f.stage = STAGE_TOKEN;
    rc = start_call(s, s->endpoint, 1, 0);
exit:
    if (o != NULL) {
        json_t *st = json_object_get(o, "subject_token");
        if (st != NULL) /* jansson's copy of the subject */
            OPENSSL_cleanse((char *)json_string_value(st), json_string_length(st));
        json_decref(o);
    }
    free(body);
    return rc;
}

/* ---- the token file (thread pool) ------------------------------------------------------------ */

static void read_file_work(uv_work_t *w)
{
    struct aor_token_source *s = w->data;
    char *buf = malloc(AOR_CRED_MAX_FILE + 1);
    struct stat st;
    ssize_t n;
    size_t len = 0;
    int fd;

    s->f.file_err = 0;
    if (buf == NULL) {
        s->f.file_err = ENOMEM;
        return;
    }
    /* O_NONBLOCK and regular files only: a FIFO (or a device) put there would block this
     * thread-pool thread forever, and with it the source's single flight and the exit */
    if ((fd = open(s->token_file, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)) < 0) {
        s->f.file_err = errno;
        free(buf);
        return;
    }
    if (fstat(fd, &st) != 0)
        s->f.file_err = errno;
    else if (!S_ISREG(st.st_mode))
        s->f.file_err = S_ISDIR(st.st_mode) ? EISDIR : FILE_NOT_REGULAR;
    if (s->f.file_err != 0) {
        close(fd);
        free(buf);
        return;
    }
    while (len <= AOR_CRED_MAX_FILE && (n = read(fd, buf + len, AOR_CRED_MAX_FILE + 1 - len)) != 0) {
        if (n < 0) {
            if (errno == EINTR)
                continue;
            s->f.file_err = errno;
            break;
        }
        len += (size_t)n;
        if (len == AOR_CRED_MAX_FILE + 1)
            break;
    }
    close(fd);
    if (s->f.file_err == 0 && len > AOR_CRED_MAX_FILE)
        s->f.file_err = EFBIG;
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == ' ' || buf[len - 1] == '\t'))
        --len;
    if (s->f.file_err == 0 && !aor_cred_token_ok(buf, len))
        s->f.file_err = EINVAL;
    if (s->f.file_err != 0) {
        wipe_free(buf, AOR_CRED_MAX_FILE + 1);
        return;
    }
    buf[len] = '\0';
    s->f.file_buf = buf;
    s->f.file_len = len;
}

static void read_file_done(uv_work_t *w, int status)
{
    struct aor_token_source *s = w->data;
    char detail[DETAIL_MAX];

    s->f.work_pending = 0;
    if (s->f.stopping || status == UV_ECANCELED) {
        end_fetch(s);
        return;
    }
    if (s->f.file_err != 0 || s->f.file_buf == NULL) {
        snprintf(detail, sizeof(detail), "%s",
                 s->f.file_err == EFBIG              ? "larger than 16 KiB"
                 : s->f.file_err == EINVAL           ? "empty or not a token"
                 : s->f.file_err == FILE_NOT_REGULAR ? "not a regular file"
                                                     : strerror(s->f.file_err));
        s->f.stage = STAGE_TOKEN;
        fetch_failed(s, "token_file unreadable", detail);
        return;
    }
    /* openai_wif: the file is the subject (file), or the assertion for Entra's subject token (workload_identity) */
    if ((s->type != AOR_CRED_OPENAI_WIF ? call_entra(s, s->endpoint, STAGE_TOKEN, s->f.file_buf, s->f.file_len)
         : s->entra_url != NULL         ? call_entra(s, s->entra_url, STAGE_EXTERNAL, s->f.file_buf, s->f.file_len)
                                        : call_openai(s, s->f.file_buf, s->f.file_len)) != 0)
        fetch_failed(s, "cannot start the call", NULL);
}

/* ---- one fetch ------------------------------------------------------------------------------- */

static void start_fetch(struct aor_token_source *s)
{
    int rc = 0;

    uv_timer_stop(&s->f.timer);
    s->f.fetching = 1;
    s->f.stage = STAGE_TOKEN;
    s->f.next_due = UINT64_MAX;
    pthread_mutex_lock(&s->lock);
    s->fetch_started_ms = mono_ms();
    pthread_mutex_unlock(&s->lock);
    switch (s->type) {
    case AOR_CRED_MANAGED_IDENTITY:
        rc = call_managed_identity(s, s->endpoint);
        break;
    case AOR_CRED_OPENAI_WIF:
        if (s->subject_url != NULL) {
            if (s->f.ext_token != NULL && mono_ms() < s->f.ext_refresh_ms) {
                rc = call_openai(s, s->f.ext_token, s->f.ext_len);
            } else {
                s->f.stage = STAGE_EXTERNAL;
                rc = call_managed_identity(s, s->subject_url);
            }
            break;
        }
        if (s->entra_url != NULL && s->f.ext_token != NULL && mono_ms() < s->f.ext_refresh_ms) {
            rc = call_openai(s, s->f.ext_token, s->f.ext_len); /* Entra's subject token is still good */
            break;
        }
        /* a token file, re-read for every call (the subject itself, or the assertion for Entra's) */
        __attribute__((fallthrough));
    case AOR_CRED_WORKLOAD_IDENTITY:
        /* the projected token rotates: read it again for every call, in the thread pool */
        s->f.work.data = s;
        if ((rc = uv_queue_work(s->f.loop, &s->f.work, read_file_work, read_file_done)) == 0)
            s->f.work_pending = 1;
        break;
    case AOR_CRED_CLIENT_SECRET:
        rc = call_entra(s, s->endpoint, STAGE_TOKEN, NULL, 0);
        break;
    case AOR_CRED_OIDC_FEDERATION:
        if (s->f.ext_token != NULL && mono_ms() < s->f.ext_refresh_ms)
            rc = call_entra(s, s->endpoint, STAGE_TOKEN, s->f.ext_token, s->f.ext_len);
        else
            rc = call_external(s);
        break;
    default:
        rc = -1;
        break;
    }
    if (rc != 0)
        fetch_failed(s, "cannot start the call", NULL);
}

static void on_xfer_done(struct aor_upstream_xfer *xfer, CURLcode result)
{
    struct aor_token_source *s = (struct aor_token_source *)((char *)xfer - offsetof(struct aor_token_source, f.xfer));
    char detail[DETAIL_MAX], tok[AOR_CRED_MAX_TOKEN + 1];
    struct aor_cred_response r;
    long code = 0;
    int rc;

    curl_easy_getinfo(xfer->easy, CURLINFO_RESPONSE_CODE, &code);
    aor_upstream_release(s->f.up, xfer->easy);
    xfer->easy = NULL;
    if (result != CURLE_OK) {
        int big = s->f.over_limit || result == CURLE_FILESIZE_EXCEEDED;
        snprintf(detail, sizeof(detail), "%s",
                 big                      ? "answer over 64 KiB"
                 : s->f.errbuf[0] != '\0' ? s->f.errbuf
                                          : curl_easy_strerror(result));
        redact_all(s, detail, sizeof(detail));
        fetch_failed(s, big ? "answer too large" : "transport error", detail);
        return;
    }
    rc = aor_cred_parse_response(s->f.body, s->f.len, wall_ms(), tok, sizeof(tok), &r);
    if (code != 200 || rc != 0) {
        if (code != 200)
            snprintf(detail, sizeof(detail), "HTTP %ld%s%s%s%s", code, r.error[0] != '\0' ? " error=" : "", r.error,
                     r.error_description[0] != '\0' ? " error_description=" : "", r.error_description);
        else
            snprintf(detail, sizeof(detail), "%s", aor_cred_parse_error(rc));
        redact_all(s, detail, sizeof(detail));
        OPENSSL_cleanse(tok, sizeof(tok));
        if (s->f.stage == STAGE_TOKEN && (s->type == AOR_CRED_OIDC_FEDERATION || s->type == AOR_CRED_OPENAI_WIF))
            drop_ext(s); /* Entra may have refused the assertion: the next try gets a fresh one */
        fetch_failed(s, code != 200 ? "refused" : "unusable answer", detail);
        return;
    }
    if (s->f.stage == STAGE_EXTERNAL) {
        drop_ext(s);
        if ((s->f.ext_token = malloc(r.token_len + 1)) == NULL) {
            OPENSSL_cleanse(tok, sizeof(tok));
            fetch_failed(s, "out of memory", NULL);
            return;
        }
        memcpy(s->f.ext_token, tok, r.token_len + 1);
        s->f.ext_len = r.token_len;
        s->f.ext_refresh_ms = mono_ms() + (uint64_t)aor_cred_refresh_after_ms(r.lifetime_ms, r.refresh_in_ms);
        OPENSSL_cleanse(tok, sizeof(tok));
        end_call(s);
        if ((s->type == AOR_CRED_OPENAI_WIF ? call_openai(s, s->f.ext_token, s->f.ext_len)
                                            : call_entra(s, s->endpoint, STAGE_TOKEN, s->f.ext_token, s->f.ext_len)) != 0)
            fetch_failed(s, "cannot start the call", NULL);
        return;
    }
    install(s, tok, &r);
    OPENSSL_cleanse(tok, sizeof(tok));
}

static void pause_fetching(struct aor_token_source *s)
{
    if (s->f.xfer.active) {
        aor_upstream_cancel(s->f.up, &s->f.xfer);
        s->f.next_due = 0;
    }
    if (s->f.xfer.easy != NULL) {
        aor_upstream_release(s->f.up, s->f.xfer.easy);
        s->f.xfer.easy = NULL;
    }
    if (!s->f.work_pending) {
        end_fetch(s);
        pthread_mutex_lock(&s->lock);
        s->fetch_started_ms = 0; /* nothing in flight to wait for */
        pthread_mutex_unlock(&s->lock);
    } else {
        s->f.next_due = 0;
    }
    uv_timer_stop(&s->f.timer);
}

static void on_timer(uv_timer_t *t)
{
    evaluate(t->data);
}

static void evaluate(struct aor_token_source *s)
{
    uint64_t now;

    if (!s->f.started || s->f.stopping)
        return;
    if (atomic_exchange(&s->drop_flag, 0) != 0)
        s->f.next_due = 0;
    if (!atomic_load(&s->wanted)) {
        if (s->f.fetching && !s->f.work_pending)
            pause_fetching(s);
        uv_timer_stop(&s->f.timer);
        return;
    }
    if (s->f.fetching)
        return; /* single flight: the call in progress answers */
    now = mono_ms();
    if (s->f.next_due > now) {
        uv_timer_start(&s->f.timer, on_timer, s->f.next_due - now, 0);
        return;
    }
    start_fetch(s);
}

static void on_async(uv_async_t *a)
{
    evaluate(a->data);
}

void aor_token_source_refused(struct aor_token_source *s, uint64_t serial)
{
    struct aor_cred_token *old = NULL;
    uint64_t now = mono_ms();

    pthread_mutex_lock(&s->lock);
    if (s->token != NULL && s->token->serial == serial &&
        (s->last_drop_ms == 0 || now - s->last_drop_ms >= AOR_CRED_INVALIDATE_COOLDOWN_MS)) {
        old = s->token;
        s->token = NULL;
        s->last_drop_ms = now;
        s->pending_since_ms = now;
        atomic_store(&s->drop_flag, 1);
        if (s->running)
            uv_async_send(&s->f.async);
    }
    pthread_mutex_unlock(&s->lock);
    if (old != NULL) {
        AOR_LOG(AOR_LOG_WARN, "cred",
                "%s: the token was refused (a backend's 401, or Redis' WRONGPASS); dropped, fetching a new one", s->label);
        __atomic_store_n(&s->stats.expires_at_ms, 0, __ATOMIC_RELAXED);
        aor_token_release(old);
    }
}

/* ---- create / identity ------------------------------------------------------------------------ */

static int is_token_type(enum aor_cred_type t)
{
    return t == AOR_CRED_MANAGED_IDENTITY || t == AOR_CRED_WORKLOAD_IDENTITY || t == AOR_CRED_CLIENT_SECRET ||
           t == AOR_CRED_OIDC_FEDERATION || t == AOR_CRED_OPENAI_WIF;
}

static const char *type_name(enum aor_cred_type t)
{
    switch (t) {
    case AOR_CRED_MANAGED_IDENTITY:
        return "managed_identity";
    case AOR_CRED_WORKLOAD_IDENTITY:
        return "workload_identity";
    case AOR_CRED_CLIENT_SECRET:
        return "client_secret";
    case AOR_CRED_OIDC_FEDERATION:
        return "oidc_federation";
    case AOR_CRED_OPENAI_WIF:
        return "openai_wif";
    default:
        return "?";
    }
}

static const char *secret_of(const struct aor_cred_conf *c)
{
    switch (c->type) {
    case AOR_CRED_MANAGED_IDENTITY:
        return c->identity_header;
    case AOR_CRED_CLIENT_SECRET:
        return c->secret;
    case AOR_CRED_OIDC_FEDERATION:
        return c->client_secret;
    default:
        return NULL;
    }
}

/* Entra ID's v2.0 token URL for c's tenant; malloc'd, NULL without authority_host/tenant_id */
static char *entra_token_url(const struct aor_cred_conf *c)
{
    size_t n;
    char *s;

    if (c->authority_host == NULL || c->tenant_id == NULL)
        return NULL;
    n = strlen(c->authority_host) + strlen(c->tenant_id) + sizeof("/oauth2/v2.0/token");
    if ((s = malloc(n)) != NULL)
        snprintf(s, n, "%s%s/oauth2/v2.0/token", c->authority_host, c->tenant_id); /* authority_host ends with one '/' */
    return s;
}

/* the Entra token URL, the managed identity endpoint or OpenAI's token URL; malloc'd */
static char *endpoint_of(const struct aor_cred_conf *c)
{
    if (c->type == AOR_CRED_MANAGED_IDENTITY)
        return strdup(c->identity_endpoint != NULL ? c->identity_endpoint : c->imds_endpoint);
    if (c->type == AOR_CRED_OPENAI_WIF)
        return strdup(c->token_url != NULL ? c->token_url : "https://auth.openai.com/oauth/token");
    return entra_token_url(c);
}

static char *key_of(const struct aor_cred_conf *c)
{
    const char *parts[] = {type_name(c->type),    c->identity_endpoint, c->imds_endpoint,   c->authority_host,
                           c->tenant_id,          c->client_id,         c->token_file,      c->token_url,
                           c->audience,           c->azure_client_id,   c->resource,        c->identity_provider_id,
                           c->service_account_id, c->subject_type,      c->subject_resource};
    size_t i, n = 1;
    char *k;

    for (i = 0; i != sizeof(parts) / sizeof(parts[0]); ++i)
        n += (parts[i] != NULL ? strlen(parts[i]) : 1) + 1;
    if ((k = malloc(n)) == NULL)
        return NULL;
    k[0] = '\0';
    for (i = 0; i != sizeof(parts) / sizeof(parts[0]); ++i) {
        strcat(k, parts[i] != NULL ? parts[i] : "-");
        strcat(k, "\n");
    }
    return k;
}

static int digest(const char *secret, unsigned char out[32])
{
    unsigned int n = 0;
    if (secret == NULL) {
        memset(out, 0, 32);
        return 0;
    }
    return EVP_Digest(secret, strlen(secret), out, &n, EVP_sha256(), NULL) == 1 && n == 32 ? 0 : -1;
}

static void source_free(struct aor_token_source *s)
{
    if (s == NULL)
        return;
    aor_token_release(s->token);
    pthread_mutex_destroy(&s->lock);
    end_fetch(s);
    drop_ext(s);
    free(s->endpoint);
    free(s->resource);
    free(s->client_id);
    free(s->token_file);
    wipe_free_str(s->secret);
    free(s->ext_url);
    free(s->entra_url);
    free(s->ext_client_id);
    free(s->ext_audience);
    free(s->wif_idp);
    free(s->wif_sa);
    free(s->subject_url);
    free(s->key);
    OPENSSL_cleanse(s->secret_digest, sizeof(s->secret_digest));
    free(s);
}

static struct aor_token_source *source_create(const struct aor_cred_conf *c)
{
    struct aor_token_source *s = calloc(1, sizeof(*s));
    const char *secret = secret_of(c), *cid = c->type == AOR_CRED_OIDC_FEDERATION ? c->azure_client_id : c->client_id;

    if (s == NULL)
        return NULL;
    pthread_mutex_init(&s->lock, NULL);
    s->type = c->type;
    s->app_service = c->type == AOR_CRED_MANAGED_IDENTITY && c->identity_endpoint != NULL;
    if (c->type == AOR_CRED_OPENAI_WIF &&
        (c->identity_provider_id == NULL || c->service_account_id == NULL || c->subject_type == NULL ||
         (s->wif_idp = strdup(c->identity_provider_id)) == NULL || (s->wif_sa = strdup(c->service_account_id)) == NULL ||
         (strcmp(c->subject_type, "managed_identity") == 0 &&
          (c->imds_endpoint == NULL || c->subject_resource == NULL || (s->subject_url = strdup(c->imds_endpoint)) == NULL)) ||
         (strcmp(c->subject_type, "managed_identity") != 0 && c->token_file == NULL) ||
         /* workload_identity: Entra's token for subject.resource, with token_file as client_assertion */
         (strcmp(c->subject_type, "workload_identity") == 0 &&
          (c->client_id == NULL || c->subject_resource == NULL || (s->entra_url = entra_token_url(c)) == NULL))))
        goto fail;
    if ((s->endpoint = endpoint_of(c)) == NULL ||
        (s->resource = strdup(c->type == AOR_CRED_OPENAI_WIF ? (c->subject_resource != NULL ? c->subject_resource : "")
                              : c->resource != NULL          ? c->resource
                                                             : "")) == NULL ||
        (cid != NULL && (s->client_id = strdup(cid)) == NULL) ||
        (c->token_file != NULL && (s->token_file = strdup(c->token_file)) == NULL) ||
        (secret != NULL && (s->secret = strdup(secret)) == NULL) || (s->key = key_of(c)) == NULL ||
        digest(secret, s->secret_digest) != 0)
        goto fail;
    if (c->type == AOR_CRED_OIDC_FEDERATION &&
        (c->token_url == NULL || c->client_id == NULL || c->audience == NULL || (s->ext_url = strdup(c->token_url)) == NULL ||
         (s->ext_client_id = strdup(c->client_id)) == NULL || (s->ext_audience = strdup(c->audience)) == NULL))
        goto fail;
    if ((c->type != AOR_CRED_MANAGED_IDENTITY && c->type != AOR_CRED_OPENAI_WIF && s->client_id == NULL) ||
        (c->type == AOR_CRED_WORKLOAD_IDENTITY && s->token_file == NULL) ||
        (c->type != AOR_CRED_MANAGED_IDENTITY && c->type != AOR_CRED_WORKLOAD_IDENTITY && c->type != AOR_CRED_OPENAI_WIF &&
         s->secret == NULL) ||
        (s->app_service && s->secret == NULL))
        goto fail;
    {
        /* the resource only when it is not the backends' usual one (Redis: https://redis.azure.com) */
        int show = c->type != AOR_CRED_OPENAI_WIF && s->resource[0] != '\0' &&
                   strcmp(s->resource, "https://cognitiveservices.azure.com") != 0;
        snprintf(s->label, sizeof(s->label), "%s%s%s%.80s%s%.60s", type_name(c->type), s->app_service ? " (App Service)" : "",
                 s->client_id != NULL ? " client_id=" : "", s->client_id != NULL ? s->client_id : "", show ? " resource=" : "",
                 show ? s->resource : "");
    }
    for (char *p = s->label; *p != '\0'; ++p)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
            *p = '?';
    atomic_init(&s->wanted, 0);
    atomic_init(&s->drop_flag, 0);
    s->pending_since_ms = mono_ms(); /* cold: the first token is on its way */
    return s;
fail:
    source_free(s);
    return NULL;
}

static int same_source(const struct aor_token_source *s, const struct aor_cred_conf *c)
{
    unsigned char d[32];
    char *k = key_of(c);
    int same;

    if (k == NULL)
        return 0;
    same = s->type == c->type && strcmp(s->key, k) == 0 && digest(secret_of(c), d) == 0 &&
           CRYPTO_memcmp(d, s->secret_digest, sizeof(d)) == 0;
    free(k);
    OPENSSL_cleanse(d, sizeof(d));
    return same;
}

/* ---- the registry ------------------------------------------------------------------------------ */

static struct {
    pthread_mutex_t lock;
    struct aor_token_source *head;
    uv_loop_t *loop;
    struct aor_upstream *up;
    uv_async_t wake;
    int running;
} reg = {.lock = PTHREAD_MUTEX_INITIALIZER};

static struct aor_token_source *registry_head(void)
{
    return __atomic_load_n(&reg.head, __ATOMIC_ACQUIRE);
}

static void source_start(struct aor_token_source *s)
{
    s->f.loop = reg.loop;
    s->f.up = reg.up;
    uv_async_init(reg.loop, &s->f.async, on_async);
    s->f.async.data = s;
    uv_timer_init(reg.loop, &s->f.timer);
    s->f.timer.data = s;
    s->f.open_handles = 2;
    s->f.started = 1;
    pthread_mutex_lock(&s->lock);
    s->running = 1;
    pthread_mutex_unlock(&s->lock);
    uv_timer_start(&s->f.timer, on_timer, 0, 0);
}

static void on_reg_wake(uv_async_t *a)
{
    struct aor_token_source *s;

    pthread_mutex_lock(&reg.lock);
    for (s = reg.head; s != NULL; s = s->reg_next) {
        if (!s->f.started) {
            if (atomic_load(&s->wanted))
                source_start(s);
        } else {
            evaluate(s);
        }
    }
    pthread_mutex_unlock(&reg.lock);
}

/*
 * The keyless credentials of `conf` that get a source: out[i] (capacity conf->num_backends + 1);
 * returns how many. redis.auth is one (its resource, https://redis.azure.com, makes it a source of
 * its own even for an identity a backend also uses).
 */
static size_t creds_of(struct aor_config *conf, struct aor_cred_conf **out)
{
    size_t i, n = 0;

    if (conf->redis.url != NULL && is_token_type(conf->redis.cred.type) && conf->redis.cred.type != AOR_CRED_OPENAI_WIF)
        out[n++] = &conf->redis.cred;

    for (i = 0; i != conf->num_backends; ++i)
        /* Entra tokens are for Azure backends, OpenAI's exchanged tokens for OpenAI's */
        if (is_token_type(conf->backends[i].cred.type) &&
            (conf->backends[i].cred.type == AOR_CRED_OPENAI_WIF) == (conf->backends[i].provider == AOR_PROVIDER_OPENAI))
            out[n++] = &conf->backends[i].cred;
    return n;
}

int aor_creds_attach(struct aor_config *conf)
{
    struct aor_token_source *s, **chosen;
    struct aor_cred_conf **creds;
    size_t i, j, n;

    chosen = calloc(conf->num_backends + 1, sizeof(*chosen));
    creds = calloc(conf->num_backends + 1, sizeof(*creds));
    if (chosen == NULL || creds == NULL) {
        free(chosen);
        free(creds);
        return -1;
    }
    n = creds_of(conf, creds);
    for (i = 0; i != n; ++i) {
        struct aor_cred_conf *c = creds[i];
        pthread_mutex_lock(&reg.lock);
        for (s = reg.head; s != NULL && !same_source(s, c); s = s->reg_next)
            ;
        pthread_mutex_unlock(&reg.lock);
        if (s == NULL) {
            if ((s = source_create(c)) == NULL) {
                free(chosen);
                free(creds);
                return -1;
            }
            pthread_mutex_lock(&reg.lock);
            s->reg_next = reg.head;
            __atomic_store_n(&reg.head, s, __ATOMIC_RELEASE); /* redact_all walks it without the lock */
            pthread_mutex_unlock(&reg.lock);
        }
        chosen[i] = s;
    }
    pthread_mutex_lock(&reg.lock);
    for (s = reg.head; s != NULL; s = s->reg_next) {
        int wanted = 0;
        for (j = 0; j != n && !wanted; ++j)
            wanted = chosen[j] == s;
        atomic_store(&s->wanted, wanted);
    }
    for (i = 0; i != n; ++i) {
        creds[i]->source = chosen[i];
        creds[i]->stats = &chosen[i]->stats;
    }
    if (reg.running)
        uv_async_send(&reg.wake);
    pthread_mutex_unlock(&reg.lock);
    free(chosen);
    free(creds);
    return 0;
}

int aor_creds_start(uv_loop_t *loop, struct aor_upstream *up)
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
    uv_async_send(&reg.wake);
    pthread_mutex_unlock(&reg.lock);
    return 0;
}

static void on_source_handle_closed(uv_handle_t *h)
{
    struct aor_token_source *s = h->data;
    --s->f.open_handles;
}

void aor_creds_stop(void)
{
    struct aor_token_source *s;

    pthread_mutex_lock(&reg.lock);
    if (reg.running) {
        reg.running = 0;
        for (s = reg.head; s != NULL; s = s->reg_next) {
            if (!s->f.started || s->f.stopping)
                continue;
            pthread_mutex_lock(&s->lock);
            s->running = 0;
            pthread_mutex_unlock(&s->lock);
            s->f.stopping = 1;
            if (s->f.work_pending)
                uv_cancel((uv_req_t *)&s->f.work);
            pause_fetching(s);
            uv_close((uv_handle_t *)&s->f.timer, on_source_handle_closed);
            uv_close((uv_handle_t *)&s->f.async, on_source_handle_closed);
        }
        uv_close((uv_handle_t *)&reg.wake, NULL);
    }
    pthread_mutex_unlock(&reg.lock);
}

void aor_creds_free(void)
{
    pthread_mutex_lock(&reg.lock);
    while (reg.head != NULL) {
        struct aor_token_source *s = reg.head;
        reg.head = s->reg_next;
        if (s->f.open_handles != 0 || s->f.work_pending) {
            /* a handle or a file read still refers to it: leaking beats a write into freed memory */
            AOR_LOG(AOR_LOG_ERROR, "cred", "%s: freed before its handles closed; leaking it", s->label);
            continue;
        }
        source_free(s);
    }
    reg.loop = NULL;
    reg.up = NULL;
    pthread_mutex_unlock(&reg.lock);
}
